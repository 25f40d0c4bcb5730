use super::*;
use crate::rollout::traffic::ProxyTraffic;
use crate::xds::load::ClusterCounters;
use proptest::prelude::*;

fn count(id: &str, requests: u64, errors: u64) -> ProxyCount {
    ProxyCount {
        id: id.into(),
        requests,
        errors,
    }
}

/// `n` proxies `p0`, `p1`..., each with `requests` requests and `errors`
/// errors.
fn honest(n: usize, requests: u64, errors: u64) -> Vec<ProxyCount> {
    (0..n)
        .map(|i| count(&format!("p{i}"), requests, errors))
        .collect()
}

fn percent(p: &str) -> Ratio {
    Ratio::parse_percent(p).expect("a percentage")
}

/// A threshold with no baseline in it.
fn at_most(p: &str) -> Allowed {
    Allowed {
        ratio: percent(p),
        over_baseline: None,
    }
}

const SEC: Duration = Duration::from_secs(1);

fn judged(counts: &[ProxyCount], allowed: &str, min: u64) -> Judged {
    judge("green", counts, &at_most(allowed), min, SEC)
}

fn fails(j: &Judged) -> bool {
    matches!(j, Judged::Fail(_))
}

#[test]
fn one_proxy_alone_is_judged_by_its_own_ratio() {
    assert_eq!(judged(&[count("a", 1000, 10)], "1%", 100), Judged::Pass);
    let Judged::Fail(f) = judged(&[count("a", 1000, 11)], "1%", 100) else {
        panic!("1.1% is over 1%");
    };
    assert_eq!(
        (f.ratio, f.requests, f.errors, &f.fleet),
        (percent("1.1%"), 1000, 11, &"green".to_owned())
    );
    assert_eq!(f.proxies.named, ["a"]);
    assert_eq!(
        judged(&[count("a", 99, 99)], "1%", 100),
        Judged::TooFew(Shortfall::Requests {
            counted: 99,
            needed: 100,
            proxies: 1
        })
    );
    // A proxy with no requests is no evidence either way.
    assert_eq!(
        judged(&[count("a", 0, 0), count("b", 0, 0)], "1%", 1),
        Judged::TooFew(Shortfall::Requests {
            counted: 0,
            needed: 1,
            proxies: 0
        })
    );
}

#[test]
fn a_lying_proxy_with_huge_error_counts_cannot_fail_a_healthy_fleet() {
    for n in [2, 3, 10] {
        let mut counts = honest(n, 500, 1);
        counts.push(count("liar", u64::MAX / 2, u64::MAX / 2));
        let j = judged(&counts, "1%", 100);
        assert!(!fails(&j), "{n} honest proxies: {j:?}");
        if n >= 2 {
            assert_eq!(j, Judged::Pass, "{n} honest proxies outvote it");
        }
    }
    // Alone with one honest proxy, it cannot fail the fleet either: the
    // two disagree, and there is no verdict.
    let j = judged(
        &[count("a", 500, 0), count("liar", 1 << 40, 1 << 40)],
        "1%",
        100,
    );
    assert!(
        matches!(&j, Judged::TooFew(Shortfall::Disagree { over, under, .. })
            if over.0 == "liar" && under.0 == "a"),
        "{j:?}"
    );
}

#[test]
fn a_lying_proxy_with_huge_success_counts_cannot_pass_a_failing_fleet() {
    for n in [2, 3, 10] {
        let mut counts = honest(n, 500, 50);
        counts.push(count("liar", u64::MAX / 2, 0));
        let Judged::Fail(f) = judged(&counts, "9.5%", 100) else {
            panic!("{n} failing proxies must fail the fleet");
        };
        assert_eq!(f.ratio, percent("10%"), "{n}: the honest ones' ratio");
        // The figures are what was reported, the lie included.
        assert_eq!(f.proxies.named.len() + f.proxies.more, n + 1);
    }
}

#[test]
fn no_proxy_weighs_more_than_twice_the_median_one() {
    // Left out: a (lowest) and e (highest). Of b, c and d, c reports
    // 10,000 times the requests of the others; uncapped it would make the
    // ratio its own 4%, over the 3.8% allowed. Capped at twice the median
    // (100), the pool is (1 + 8 + 5) / 400 = 3.5%.
    let counts = [
        count("a", 100, 0),
        count("b", 100, 1),
        count("c", 1_000_000, 40_000),
        count("d", 100, 5),
        count("e", 100, 10),
    ];
    assert_eq!(judged(&counts, "3.8%", 100), Judged::Pass);
    let Judged::Fail(f) = judged(&counts, "3.4%", 100) else {
        panic!("3.5% is over 3.4%");
    };
    assert_eq!(f.ratio, percent("3.5%"));
    // And the requests needed are counted capped too: three proxies with
    // 10 requests each and one claiming a billion make 10 * 3 + 20.
    let few = [
        count("a", 10, 0),
        count("b", 10, 0),
        count("c", 10, 0),
        count("big", 1_000_000_000, 0),
    ];
    assert_eq!(
        judged(&few, "1%", 100),
        Judged::TooFew(Shortfall::Requests {
            counted: 50,
            needed: 100,
            proxies: 4
        })
    );
}

#[test]
fn two_proxies_decide_only_together() {
    let both_over = [count("a", 100, 5), count("b", 100, 3)];
    assert!(fails(&judged(&both_over, "1%", 100)));
    let both_under = [count("a", 100, 1), count("b", 100, 0)];
    assert_eq!(judged(&both_under, "1%", 100), Judged::Pass);
    let split = [count("a", 100, 0), count("b", 100, 5)];
    assert_eq!(
        judged(&split, "1%", 100),
        Judged::TooFew(Shortfall::Disagree {
            over: ("b".into(), percent("5%")),
            under: ("a".into(), percent("0%")),
            allowed: percent("1%"),
        })
    );
}

#[test]
fn equal_proxies_are_pooled_whole() {
    // Every ratio equal: the two left out are two different proxies, and
    // the rest carry the same ratio.
    let Judged::Fail(f) = judged(&honest(4, 100, 2), "1%", 100) else {
        panic!("2% is over 1%");
    };
    assert_eq!((f.ratio, f.requests, f.errors), (percent("2%"), 400, 8));
}

#[test]
fn figures_name_the_first_proxies_by_id_and_count_the_rest() {
    let counts: Vec<ProxyCount> = ["g", "c", "a", "f", "b", "e", "d"]
        .iter()
        .map(|id| count(id, 100, 50))
        .collect();
    let Judged::Fail(f) = judged(&counts, "1%", 1) else {
        panic!("50% is over 1%");
    };
    assert_eq!(f.proxies.named, ["a", "b", "c", "d", "e"]);
    assert_eq!(f.proxies.more, 2);
}

proptest! {
    /// Whatever one proxy reports, when every other proxy (two or more)
    /// sees the fleet over the threshold it fails, and when every other
    /// sees it at or under, it passes.
    #[test]
    fn one_proxy_never_overturns_the_others(
        others in prop::collection::vec((1u64..100_000, 0u64..=1000), 2..20),
        liar_requests in 0u64..u64::MAX / 2,
        liar_errors in 0u64..u64::MAX / 2,
        threshold_ppm in 1u32..999_999,
    ) {
        let allowed = Allowed { ratio: Ratio::from_ppm(threshold_ppm), over_baseline: None };
        // Each honest proxy's errors: a share (per mille) of its requests,
        // moved to one side of the threshold.
        for failing in [true, false] {
            let mut counts: Vec<ProxyCount> = others
                .iter()
                .enumerate()
                .map(|(i, &(requests, per_mille))| {
                    let errors = requests * per_mille / 1000;
                    let ratio = Ratio::of(errors, requests);
                    let errors = match (failing, ratio > allowed.ratio) {
                        (true, false) => requests,
                        (false, true) => 0,
                        _ => errors,
                    };
                    count(&format!("p{i}"), requests, errors)
                })
                .collect();
            counts.push(count("liar", liar_requests, liar_errors));
            let j = judge("green", &counts, &allowed, 1, SEC);
            prop_assert_eq!(fails(&j), failing, "{:?}", j);
            prop_assert!(!matches!(j, Judged::TooFew(_)), "{:?}", j);
        }
    }
}

#[test]
fn the_lower_threshold_applies_and_a_thin_baseline_counts_as_zero() {
    let criteria = |max: Option<&str>, over: Option<&str>| Criteria {
        max_error_ratio: max.map(percent),
        over_baseline: over.map(percent),
        min_requests: 100,
        window: SEC,
        too_few_requests: TooFewRequests::Wait,
    };
    let blue = |requests, errors| Baseline {
        fleets: vec!["blue".into()],
        requests,
        errors,
    };
    let both = criteria(Some("1%"), Some("0.5%"));
    // Blue failed 0.2% before: 0.7% allowed, under the 1% cap.
    let a = both.allowed(Some(&blue(1000, 2)));
    assert_eq!(a.ratio, percent("0.7%"));
    assert_eq!(
        a.to_string(),
        "0.7% allowed (blue's 0.2% before the switch + 0.5 points)"
    );
    // Blue failed 2% before: the absolute 1% is the lower.
    let a = both.allowed(Some(&blue(1000, 20)));
    assert_eq!((a.ratio, &a.over_baseline), (percent("1%"), &None));
    assert_eq!(a.to_string(), "1% allowed");
    // 99 requests are too few for a baseline: taken as 0%.
    let a = both.allowed(Some(&blue(99, 99)));
    assert_eq!(a.ratio, percent("0.5%"));
    assert_eq!(
        a.to_string(),
        "0.5% allowed (too few requests to blue before the switch for a baseline: 0% + 0.5 \
         points)"
    );
    assert_eq!(
        criteria(None, Some("0.5%")).allowed(None).ratio,
        percent("0.5%")
    );
    assert_eq!(
        criteria(Some("1%"), None)
            .allowed(Some(&blue(1000, 500)))
            .ratio,
        percent("1%")
    );
}

fn traffic(fleet: &str, proxies: &[(&str, Option<(u64, u64)>)]) -> Vec<FleetTraffic> {
    vec![FleetTraffic {
        fleet: fleet.into(),
        proxies: proxies
            .iter()
            .map(|(id, load)| ProxyTraffic {
                id: (*id).into(),
                load: load.map(|(requests, errors)| ClusterCounters {
                    requests,
                    errors,
                    ..ClusterCounters::default()
                }),
            })
            .collect(),
    }]
}

fn counted(w: &Window, fleet: &str) -> Vec<(String, u64, u64)> {
    let mut c: Vec<(String, u64, u64)> = w
        .counts(fleet)
        .into_iter()
        .map(|c| (c.id.to_string(), c.requests, c.errors))
        .collect();
    c.sort();
    c
}

#[test]
fn a_window_counts_only_what_came_after_each_proxy_was_first_seen() {
    let t = Instant::now();
    let mut w = Window::new(&["green".into()], t, 10 * SEC);
    // a has counted 500 before the window; b nothing of green yet.
    w.observe(&traffic("green", &[("a", Some((500, 5))), ("b", None)]));
    assert_eq!(
        counted(&w, "green"),
        [("a".into(), 0, 0), ("b".into(), 0, 0)]
    );
    w.observe(&traffic(
        "green",
        &[
            ("a", Some((600, 6))),
            ("b", Some((40, 1))),
            ("c", Some((9000, 90))),
        ],
    ));
    // c, first seen now, is marked where it stands.
    assert_eq!(
        counted(&w, "green"),
        [
            ("a".into(), 100, 1),
            ("b".into(), 40, 1),
            ("c".into(), 0, 0)
        ]
    );
    // a's load stream reopened: its sums start again from zero. b's went
    // away: it starts from zero when it comes back. c left.
    w.observe(&traffic("green", &[("a", Some((30, 3))), ("b", None)]));
    w.observe(&traffic(
        "green",
        &[("a", Some((50, 3))), ("b", Some((7, 0)))],
    ));
    assert_eq!(
        counted(&w, "green"),
        [("a".into(), 150, 4), ("b".into(), 47, 1)]
    );
    // Fleets the window does not judge are ignored.
    w.observe(&traffic("blue", &[("a", Some((1, 1)))]));
    assert!(w.counts("blue").is_empty());
}

#[test]
fn a_window_fails_at_once_and_passes_only_at_its_end() {
    let t = Instant::now();
    let allowed = at_most("1%");
    let mut w = Window::new(&["green".into()], t, 10 * SEC);
    w.observe(&traffic("green", &[("a", Some((0, 0)))]));
    assert_eq!(w.verdict(&allowed, 100, t), Verdict::Pending);
    w.observe(&traffic("green", &[("a", Some((1000, 0)))]));
    assert_eq!(w.verdict(&allowed, 100, t + SEC), Verdict::Pending);
    assert_eq!(w.verdict(&allowed, 100, t + 10 * SEC), Verdict::Pass);
    w.observe(&traffic("green", &[("a", Some((2000, 100)))]));
    let Verdict::Fail(f) = w.verdict(&allowed, 100, t + 3 * SEC) else {
        panic!("5% is over 1%");
    };
    assert_eq!((f.after, f.errors, f.requests), (3 * SEC, 100, 2000));

    let mut few = Window::new(&["green".into()], t, 10 * SEC);
    few.observe(&traffic("green", &[("a", Some((0, 0)))]));
    few.observe(&traffic("green", &[("a", Some((10, 10)))]));
    assert_eq!(few.verdict(&allowed, 100, t + SEC), Verdict::Pending);
    assert_eq!(
        few.verdict(&allowed, 100, t + 10 * SEC),
        Verdict::TooFew {
            fleet: "green".into(),
            shortfall: Shortfall::Requests {
                counted: 10,
                needed: 100,
                proxies: 1
            }
        }
    );
}

#[test]
fn criteria_are_saved_with_their_units_in_their_names() {
    let c = Criteria {
        max_error_ratio: Some(percent("1%")),
        over_baseline: None,
        min_requests: 100,
        window: 30 * SEC,
        too_few_requests: TooFewRequests::Fail,
    };
    let json = serde_json::to_value(&c).expect("serializes");
    assert_eq!(
        json,
        serde_json::json!({
            "max_error_ratio_ppm": 10000,
            "min_requests": 100,
            "window_ms": 30000,
            "too_few_requests": "fail"
        })
    );
    assert_eq!(serde_json::from_value::<Criteria>(json).expect("loads"), c);
}
