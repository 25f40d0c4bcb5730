use super::*;

fn proxies(named: &[&str], more: usize) -> Proxies {
    Proxies {
        named: named.iter().map(|p| (*p).to_owned()).collect(),
        more,
    }
}

fn failed(check: &str, endpoint: &str, detail: &str) -> CheckResult {
    CheckResult {
        check: check.into(),
        endpoint: endpoint.into(),
        ok: false,
        detail: detail.into(),
    }
}

fn rejection(proxy: &str, why: &str) -> Rejection {
    Rejection {
        proxy: proxy.into(),
        why: why.into(),
    }
}

/// The texts operators, scripts and stored histories know, word for
/// word.
#[test]
fn every_reason_reads_as_it_always_has() {
    let stopped = || {
        Box::new(Reason::StoppedBy {
            by: "bob".into(),
            for_rollback: false,
        })
    };
    let cases = [
        (
            Reason::RejectingCurrent {
                proxy: "b".into(),
                why: "RDS 4-ab: bad regex".into(),
            },
            "proxy b is rejecting its current configuration (RDS 4-ab: bad regex); fix that \
             before switching",
        ),
        (
            Reason::PrepareTimedOut {
                waiting: proxies(&["a", "b"], 3),
            },
            "timed out preparing: not every proxy holds the current configuration yet (a, b \
             and 3 more)",
        ),
        (
            Reason::ChecksFailed {
                after_switch: false,
                failed: vec![
                    failed("health", "10.0.0.1:80", "503"),
                    failed("ready", "10.0.0.2:80", "timed out"),
                ],
            },
            "checks failed before the switch: health on 10.0.0.1:80: 503; ready on \
             10.0.0.2:80: timed out",
        ),
        (
            Reason::ChecksFailed {
                after_switch: true,
                failed: vec![failed("health", "10.0.0.1:80", "503")],
            },
            "checks failed after the switch: health on 10.0.0.1:80: 503",
        ),
        (
            Reason::ChecksTimedOut {
                within: Duration::from_secs(10),
            },
            "checks did not finish within 10s",
        ),
        (
            Reason::CommitFailed {
                error: "disk full".into(),
            },
            "could not commit: disk full",
        ),
        (
            Reason::FleetEmptied {
                service: "web".into(),
                fleet: "green".into(),
                step: None,
            },
            "fleet \"green\" of service \"web\" has no endpoints any more; traffic would go \
             nowhere, so it was not committed",
        ),
        (
            Reason::FleetEmptied {
                service: "web".into(),
                fleet: "green".into(),
                step: Some((2, 3)),
            },
            "fleet \"green\" of service \"web\" has no endpoints any more at step 2 of 3; \
             traffic would go nowhere, so it was not committed",
        ),
        (Reason::NothingToDo, "nothing to do"),
        (
            Reason::DrainTimedOut {
                fleet: "blue".into(),
                within: std::time::Duration::from_secs(300),
                last: Some(Box::new(FleetDrain {
                    fleet: "blue".into(),
                    proxies: 3,
                    idle: 1,
                    draining: vec![crate::rollout::drain::Draining {
                        proxy: "edge-1".into(),
                        in_flight: 2,
                    }],
                    draining_count: 1,
                    in_flight: 2,
                    silent: vec!["edge-9".into()],
                    silent_count: 1,
                })),
            },
            "fleet \"blue\" did not drain within 300s: 1 of 3 proxies idle; requests in \
             flight on edge-1 (2); no load reports from edge-9; nothing was retired (retry \
             later, or retire without waiting with --drain-timeout 0)",
        ),
        (
            Reason::DrainTimedOut {
                fleet: "blue".into(),
                within: std::time::Duration::from_millis(500),
                last: None,
            },
            "fleet \"blue\" did not drain within 500ms: no load report came in; nothing was \
             retired (retry later, or retire without waiting with --drain-timeout 0)",
        ),
        (
            Reason::Rejected {
                proxy: "b".into(),
                why: "RDS 3-ab: bad route".into(),
            },
            "proxy b rejected the change: RDS 3-ab: bad route",
        ),
        (
            Reason::ApplyTimedOut {
                waiting: proxies(&["slow"], 0),
            },
            "timed out waiting for proxies to apply the change: slow",
        ),
        (*stopped(), "stopped by bob"),
        (
            Reason::StoppedBy {
                by: "bob".into(),
                for_rollback: true,
            },
            "stopped by bob (a rollback cancels the retirement)",
        ),
        (
            Reason::StoppedBeforeCommit {
                by: "alice".into(),
                for_rollback: false,
                kept: 0,
            },
            "stopped by alice",
        ),
        (
            Reason::StoppedBeforeCommit {
                by: "alice".into(),
                for_rollback: true,
                kept: 0,
            },
            "stopped by alice (a rollback cancels the retirement)",
        ),
        (
            Reason::StoppedBeforeCommit {
                by: "alice".into(),
                for_rollback: false,
                kept: 2,
            },
            "stopped by alice; steps 1 to 2 stay in effect",
        ),
        (
            Reason::ServiceRemoved,
            "the service was removed from the config",
        ),
        (
            Reason::ServiceRemovedWhileStopped,
            "the service was removed from the config while teal was stopped during the \
             operation",
        ),
        (
            Reason::ShutDown {
                phase: Phase::PreChecks,
            },
            "teal shut down during pre-checks",
        ),
        (
            Reason::StoppedBeforeStep { step: 1, steps: 1 },
            "teal stopped before step 1 of 1 was committed; nothing of it is in effect",
        ),
        (
            Reason::StoppedBeforeStep { step: 3, steps: 4 },
            "teal stopped before step 3 of 4 was committed; nothing of it is in effect; \
             steps 1 to 2 stay in effect",
        ),
        (
            Reason::RestartedDuring { step: 2, steps: 3 },
            "teal restarted during step 2 of 3; steps 1 to 2 are in effect and confirmed, \
             the rest were not applied",
        ),
        (
            Reason::RollbackUnconfirmed {
                within: Duration::from_secs(10),
                waiting: proxies(&["stuck"], 0),
            },
            "the rollback is in effect, but these proxies did not confirm it within 10s: \
             stuck; teal keeps serving it to them",
        ),
        (
            Reason::RollbackRejected {
                rejections: vec![rejection("b", "RDS 4-ab: no"), rejection("c", "CDS: no")],
            },
            "the rollback is in effect, but b rejected it: RDS 4-ab: no; c rejected it: CDS: \
             no; teal does not undo a rollback",
        ),
        (
            Reason::RollbackChecks {
                checks: Box::new(Reason::ChecksTimedOut {
                    within: Duration::from_secs(10),
                }),
            },
            "the rollback is in effect, but checks did not finish within 10s",
        ),
        (
            Reason::Undone { cause: stopped() },
            "stopped by bob; the step in progress was undone",
        ),
        (
            Reason::UndoNotCommitted {
                cause: stopped(),
                error: "disk full".into(),
            },
            "stopped by bob; and the undo could not be committed (disk full): proxies keep \
             the new weights (teal rollback returns to the rollback point)",
        ),
        (
            Reason::UndoRejected {
                cause: stopped(),
                rejections: vec![rejection("b", "RDS 5-ab: no")],
            },
            "stopped by bob; put back, but b rejected it: RDS 5-ab: no",
        ),
        (
            Reason::UndoUnconfirmed {
                cause: stopped(),
                waiting: proxies(&["b"], 0),
            },
            "stopped by bob; put back, but not yet confirmed by every proxy: b; teal keeps \
             serving the previous weights to them",
        ),
        (
            Reason::TrafficErrors(Box::new(TrafficFigures {
                fleet: "green".into(),
                ratio: Ratio::from_ppm(100_312),
                allowed: Allowed {
                    ratio: Ratio::from_ppm(10_000),
                    over_baseline: None,
                },
                requests: 5204,
                errors: 522,
                proxies: proxies(&["edge-1", "edge-2"], 18),
                after: Duration::from_micros(4_212_345),
            })),
            "green's error ratio was 10.0312%, over the 1% allowed: 522 errors in 5204 \
             requests reported by proxies edge-1, edge-2 and 18 more, 4.212s after the switch",
        ),
        (
            Reason::TrafficErrors(Box::new(TrafficFigures {
                fleet: "green".into(),
                ratio: Ratio::from_ppm(9_000),
                allowed: Allowed {
                    ratio: Ratio::from_ppm(7_000),
                    over_baseline: Some(OverBaseline {
                        fleets: vec!["blue".into()],
                        baseline: Some(Ratio::from_ppm(2_000)),
                        points: Ratio::from_ppm(5_000),
                    }),
                },
                requests: 1000,
                errors: 9,
                proxies: proxies(&["edge-1"], 0),
                after: Duration::from_secs(30),
            })),
            "green's error ratio was 0.9%, over the 0.7% allowed (blue's 0.2% before the \
             switch + 0.5 points): 9 errors in 1000 requests reported by proxy edge-1, 30s \
             after the switch",
        ),
        (
            Reason::TrafficUnjudged {
                fleet: "green".into(),
                shortfall: Shortfall::Requests {
                    counted: 12,
                    needed: 100,
                    proxies: 2,
                },
                within: Duration::from_secs(30),
                waited: false,
            },
            "green's traffic could not be judged within 30s: too few requests (12 from 2 \
             proxies, 100 needed); `too_few_requests: fail` counts that as a failure",
        ),
        (
            Reason::TrafficUnjudged {
                fleet: "green".into(),
                shortfall: Shortfall::Disagree {
                    over: ("b".into(), Ratio::from_ppm(50_000)),
                    under: ("a".into(), Ratio::from_ppm(0)),
                    allowed: Ratio::from_ppm(10_000),
                },
                within: Duration::from_secs(90),
                waited: true,
            },
            "green's traffic could not be judged within 90s: its only two reporting proxies \
             disagree (b saw 5%, a saw 0%; 1% allowed) and one proxy alone does not decide; \
             waited for more until the operation's timeout",
        ),
        (Reason::Recorded("as it was".into()), "as it was"),
    ];
    for (reason, text) in cases {
        assert_eq!(reason.to_string(), text, "{reason:?}");
    }
}

#[test]
fn a_reason_is_stored_as_its_text_and_read_back_as_that_text() {
    let reason = Reason::Undone {
        cause: Box::new(Reason::StoppedBy {
            by: "bob".into(),
            for_rollback: false,
        }),
    };
    let json = serde_json::to_string(&reason).expect("serializes");
    assert_eq!(json, "\"stopped by bob; the step in progress was undone\"");
    let back: Reason = serde_json::from_str(&json).expect("parses");
    assert_eq!(
        back,
        Reason::Recorded("stopped by bob; the step in progress was undone".into())
    );
    assert_eq!(back.to_string(), reason.to_string());
}
