use super::*;
use crate::rollout::fixtures::service_status;

/// The Metrics table of `docs/cli-and-admin-api.md`: (name, type, labels) per row.
fn readme_metrics() -> Vec<(String, String, Vec<String>)> {
    let readme = include_str!("../docs/cli-and-admin-api.md");
    let table = readme
        .split("### Metrics")
        .nth(1)
        .expect("a Metrics section")
        .split("\n\n")
        .find(|block| block.starts_with("| Metric"))
        .expect("a table in it");
    let rows: Vec<_> = table
        .lines()
        .skip(2)
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let unquote = |s: &str| s.trim_matches('`').to_owned();
            let labels = cells[3]
                .split(',')
                .map(|l| unquote(l.trim()))
                .filter(|l| !l.is_empty())
                .collect();
            (unquote(cells[1]), cells[2].to_owned(), labels)
        })
        .collect();
    assert_eq!(rows.len(), 18, "{rows:?}");
    rows
}

fn service(name: &str, weights: &[(&str, u32)], both_since: Option<SystemTime>) -> ServiceStatus {
    ServiceStatus {
        both_fleets_since: both_since,
        traffic: weights
            .iter()
            .map(|(f, w)| crate::rollout::MeasuredFleet {
                fleet: (*f).to_owned(),
                window: Duration::from_secs(10),
                requests: u64::from(*w),
                errors: 1,
                in_progress: 2,
                proxies_reporting: 3,
                proxies_routing: 4,
                total_requests: 1000 + u64::from(*w),
                total_errors: 5,
            })
            .collect(),
        ..service_status(name, weights)
    }
}

/// A page with something in every metric.
fn full_page(m: &Metrics) -> String {
    let now = SystemTime::now();
    let groups = ["edge".to_owned(), "edge".to_owned(), String::new()];
    let services = [
        service(
            "web",
            &[("blue", 90), ("green", 10)],
            Some(now - Duration::from_millis(2_500)),
        ),
        service("api", &[("blue", 100)], None),
    ];
    m.page(&groups, &services, now)
}

#[test]
fn every_metric_of_the_readme_is_scraped_with_its_type_and_labels() {
    let page = full_page(&Metrics::new());
    for (name, kind, labels) in readme_metrics() {
        assert!(
            page.contains(&format!("\n# TYPE {name} {kind}\n")),
            "no `# TYPE {name} {kind}` in\n{page}"
        );
        assert!(page.contains(&format!("# HELP {name} ")), "{name}: {page}");
        let sample = if kind == "histogram" {
            format!("{name}_count")
        } else {
            name.clone()
        };
        let line = page
            .lines()
            .find(|l| {
                l.strip_prefix(sample.as_str())
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .unwrap_or_else(|| panic!("no sample of {sample} in\n{page}"));
        for label in &labels {
            assert!(line.contains(&format!("{label}=\"")), "{label}: {line}");
        }
        if labels.is_empty() {
            assert!(!line.contains('{'), "{line}");
        }
    }
}

#[test]
fn gauges_carry_the_backend_values() {
    let page = full_page(&Metrics::new());
    for line in [
        "teal_up 1\n",
        "teal_connected_proxies{group=\"edge\"} 2\n",
        "teal_connected_proxies{group=\"\"} 1\n",
        "teal_service_weight{service=\"web\",fleet=\"blue\"} 90\n",
        "teal_service_weight{service=\"web\",fleet=\"green\"} 10\n",
        "teal_service_weight{service=\"api\",fleet=\"blue\"} 100\n",
        "teal_service_live{service=\"web\",fleet=\"blue\"} 1\n",
        "teal_service_live{service=\"api\",fleet=\"blue\"} 1\n",
        "teal_service_both_fleets_seconds{service=\"web\"} 2.5\n",
        "teal_load_requests_total{service=\"web\",fleet=\"green\"} 1010\n",
        "teal_load_errors_total{service=\"web\",fleet=\"blue\"} 5\n",
        "teal_load_in_progress{service=\"api\",fleet=\"blue\"} 2\n",
        "teal_load_reporting_proxies{service=\"web\",fleet=\"green\"} 3\n",
        "teal_load_routing_proxies{service=\"web\"} 4\n",
    ] {
        assert!(page.contains(line), "missing {line:?} in\n{page}");
    }
    assert!(!page.contains("teal_service_both_fleets_seconds{service=\"api\""));
}

#[test]
fn counts_events_per_type_and_starts_every_type_at_zero() {
    let m = Metrics::new();
    m.record_event(&StreamEvent::Sent {
        ty: ResourceType::Route,
        version: "1".into(),
        nonce: "1".into(),
        resources: 1,
    });
    for _ in 0..2 {
        m.record_event(&StreamEvent::Nacked {
            ty: ResourceType::Cluster,
            version: "1".into(),
            message: "bad".into(),
        });
    }
    let mut out = String::new();
    m.render_counters(&mut out);
    assert!(out.contains("# TYPE teal_xds_responses_sent_total counter\n"));
    assert!(out.contains("teal_xds_responses_sent_total{type=\"RDS\"} 1\n"));
    assert!(out.contains("teal_xds_nacks_total{type=\"CDS\"} 2\n"));
    for ty in ["CDS", "EDS", "LDS", "RDS"] {
        assert!(out.contains(&format!("teal_xds_acks_total{{type=\"{ty}\"}} 0\n")));
    }
}

#[test]
fn histogram_buckets_sum_and_count_follow_the_observations() {
    let m = Metrics::new();
    for ms in [30, 340, 340, 120_000] {
        m.observe_convergence(Duration::from_millis(ms));
    }
    let mut out = String::new();
    m.render_counters(&mut out);
    let name = "teal_convergence_milliseconds";
    assert!(out.contains(&format!("# TYPE {name} histogram\n")), "{out}");
    let buckets: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket")))
        .collect();
    let expected: Vec<String> = [
        ("10", 0),
        ("25", 0),
        ("50", 1),
        ("100", 1),
        ("250", 1),
        ("500", 3),
        ("1000", 3),
        ("2500", 3),
        ("5000", 3),
        ("10000", 3),
        ("30000", 3),
        ("60000", 3),
        ("+Inf", 4),
    ]
    .iter()
    .map(|(le, n)| format!("{name}_bucket{{le=\"{le}\"}} {n}"))
    .collect();
    assert_eq!(buckets, expected);
    assert!(out.contains(&format!("{name}_sum 120710.0\n")), "{out}");
    assert!(out.contains(&format!("{name}_count 4\n")), "{out}");
}

#[test]
fn label_values_from_outside_are_escaped() {
    let page = Metrics::new().page(&["a\"b\\c\nd".to_owned()], &[], SystemTime::now());
    assert!(
        page.contains("teal_connected_proxies{group=\"a\\\"b\\\\c\\nd\"} 1\n"),
        "{page}"
    );
}
