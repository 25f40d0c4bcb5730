use super::*;
use envoy_types::pb::envoy::config::endpoint::v3::UpstreamLocalityStats;

fn targets() -> LoadTargets {
    let mut t = LoadTargets::default();
    for (group, service) in [("web", "api"), ("edge", "api")] {
        let c = t.groups.entry(group.to_owned()).or_default();
        for fleet in ["blue", "green"] {
            c.insert(
                format!("{service}-{fleet}"),
                Target {
                    service: service.into(),
                    fleet: fleet.into(),
                },
            );
        }
    }
    t
}

fn cluster(name: &str, success: u64, errors: u64, in_progress: u64) -> ClusterReport {
    ClusterReport {
        cluster: name.into(),
        success,
        errors,
        issued: success + errors,
        in_progress,
    }
}

fn store() -> LoadStore {
    let s = LoadStore::new(10);
    s.set_targets(targets());
    s
}

#[test]
fn a_report_counts_the_clusters_asked_and_ignores_the_rest() {
    let s = store();
    let id = s.open("p1", "web");
    let now = Instant::now();
    let taken = s.report(
        &id,
        &[cluster("api-blue", 90, 10, 3), cluster("db-blue", 5, 0, 0)],
        now,
    );
    assert_eq!(taken.counted, 1);
    assert_eq!(taken.ignored, vec!["db-blue".to_string()]);
    let p = s.proxy("p1").expect("reported");
    let blue = p.clusters["api-blue"];
    assert_eq!((blue.requests, blue.errors, blue.in_progress), (100, 10, 3));
    assert_eq!(blue.idle_reports, 0);
    // A cluster asked for and left out had nothing in progress.
    assert_eq!(p.clusters["api-green"].idle_reports, 1);
    assert!(!p.clusters.contains_key("db-blue"));
}

#[test]
fn nothing_in_progress_is_counted_in_a_row_and_reset_by_a_request() {
    let s = store();
    let id = s.open("p1", "web");
    let t0 = Instant::now();
    let idle = |s: &LoadStore| s.proxy("p1").map(|p| p.clusters["api-blue"].idle_reports);
    s.report(&id, &[cluster("api-blue", 1, 0, 0)], t0);
    s.report(
        &id,
        &[cluster("api-blue", 1, 0, 0)],
        t0 + Duration::from_secs(1),
    );
    assert_eq!(idle(&s), Some(2));
    s.report(
        &id,
        &[cluster("api-blue", 0, 0, 1)],
        t0 + Duration::from_secs(2),
    );
    assert_eq!(idle(&s), Some(0));
}

#[test]
fn reports_past_the_rate_are_dropped() {
    let s = LoadStore::new(2);
    s.set_targets(targets());
    let id = s.open("p1", "web");
    let t0 = Instant::now();
    let r = [cluster("api-blue", 1, 0, 0)];
    assert!(!s.report(&id, &r, t0).dropped);
    assert!(!s.report(&id, &r, t0 + Duration::from_millis(10)).dropped);
    assert!(s.report(&id, &r, t0 + Duration::from_millis(20)).dropped);
    assert_eq!(
        s.proxy("p1").map(|p| p.clusters["api-blue"].requests),
        Some(2)
    );
    // The next second takes reports again.
    assert!(!s.report(&id, &r, t0 + Duration::from_millis(1001)).dropped);
}

#[test]
fn absurd_counts_are_cut() {
    let stats = ClusterStats {
        cluster_name: "api-blue".into(),
        upstream_locality_stats: vec![
            UpstreamLocalityStats {
                total_successful_requests: u64::MAX,
                total_error_requests: 3,
                ..Default::default()
            },
            UpstreamLocalityStats {
                total_successful_requests: u64::MAX,
                ..Default::default()
            },
        ],
        ..Default::default()
    };
    let (r, cut) = ClusterReport::of(&stats);
    assert!(cut);
    assert_eq!((r.success, r.errors), (MAX_REQUESTS_PER_REPORT, 3));
    let (_, cut) = ClusterReport::of(&ClusterStats::default());
    assert!(!cut);
}

#[test]
fn a_newer_stream_of_the_node_replaces_the_old_and_a_closed_one_takes_its_counts() {
    let s = store();
    let old = s.open("p1", "web");
    let now = Instant::now();
    s.report(&old, &[cluster("api-blue", 5, 0, 0)], now);
    let new = s.open("p1", "web");
    assert!(s.report(&old, &[cluster("api-blue", 5, 0, 0)], now).stale);
    s.close(&old);
    assert!(
        s.proxy("p1").is_some(),
        "closing the replaced stream keeps the new"
    );
    s.close(&new);
    assert!(s.proxy("p1").is_none());
}

#[test]
fn the_measured_split_sums_every_group_over_the_window() {
    let s = store();
    let a = s.open("a", "web");
    let b = s.open("b", "edge");
    let t0 = Instant::now();
    s.report(&a, &[cluster("api-blue", 50, 0, 0)], t0);
    s.report(&b, &[cluster("api-green", 40, 10, 0)], t0);
    let later = t0 + Duration::from_secs(30);
    s.report(&a, &[cluster("api-blue", 7, 0, 0)], later);
    let m = s.measured("api", Duration::from_secs(10), later);
    assert_eq!(
        m,
        vec![
            FleetMeasured {
                fleet: "blue".into(),
                requests: 7,
                errors: 0
            },
            FleetMeasured {
                fleet: "green".into(),
                requests: 0,
                errors: 0
            },
        ]
    );
    let m = s.measured("api", Duration::from_secs(60), later);
    assert_eq!((m[0].requests, m[1].requests, m[1].errors), (57, 50, 10));
}

#[test]
fn targets_that_change_drop_counts_of_clusters_no_longer_asked() {
    let s = store();
    let id = s.open("p1", "web");
    s.report(&id, &[cluster("api-green", 5, 0, 0)], Instant::now());
    let mut t = targets();
    if let Some(web) = t.groups.get_mut("web") {
        web.remove("api-green");
    }
    s.set_targets(t);
    let p = s.proxy("p1").expect("still there");
    assert!(!p.clusters.contains_key("api-green"));
    assert_eq!(
        s.watch_targets().borrow().clusters_of("web"),
        vec!["api-blue"]
    );
}

#[test]
fn other_replicas_counts_join_the_windows_by_what_they_grew() {
    let s = store();
    let t0 = Instant::now();
    let remote = |requests: u64, errors: u64| {
        vec![ProxyLoad {
            node: Arc::from("far"),
            group: "web".into(),
            replica: Some("r2".into()),
            reports: 1,
            last_report: Some(t0),
            clusters: Arc::new(BTreeMap::from([(
                "api-green".to_owned(),
                ClusterCounters {
                    requests,
                    errors,
                    in_progress: 0,
                    idle_reports: 1,
                },
            )])),
        }]
    };
    // The first set marks where the counts start.
    s.set_remote("r2", Some(remote(1000, 10)), t0);
    let later = t0 + Duration::from_secs(1);
    s.set_remote("r2", Some(remote(1040, 12)), later);
    let m = s.measured("api", Duration::from_secs(10), later);
    assert_eq!(
        (m[1].fleet.as_str(), m[1].requests, m[1].errors),
        ("green", 40, 2)
    );
    assert_eq!(s.proxies(|g| g == "web").len(), 1);
    assert_eq!(s.proxy("far").and_then(|p| p.replica), Some("r2".into()));
    s.set_remote("r2", None, later);
    assert!(s.proxy("far").is_none());
}

#[test]
fn totals_count_every_report_per_fleet_and_outlive_the_stream_until_the_fleet_goes() {
    let s = store();
    let (a, b) = (s.open("a", "web"), s.open("b", "edge"));
    let now = Instant::now();
    s.report(&a, &[cluster("api-blue", 50, 2, 0)], now);
    s.report(&b, &[cluster("api-blue", 40, 0, 0)], now);
    s.report(&b, &[cluster("api-green", 9, 1, 0)], now);
    let totals = s.totals("api");
    assert_eq!(totals.get("blue"), Some(&(92, 2)));
    assert_eq!(totals.get("green"), Some(&(10, 1)));
    // A counter does not go down when a proxy leaves.
    s.close(&a);
    assert_eq!(s.totals("api").get("blue"), Some(&(92, 2)));
    assert!(s.totals("web").is_empty(), "no such service");
    // A fleet no group is asked for any more takes its totals with it.
    let mut t = targets();
    for clusters in t.groups.values_mut() {
        clusters.remove("api-green");
    }
    s.set_targets(t);
    assert_eq!(s.totals("api").get("green"), None);
    assert_eq!(s.totals("api").get("blue"), Some(&(92, 2)));
}
