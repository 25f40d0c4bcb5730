//! How `teal status` and `teal proxies` show what the proxies' load
//! reports say: the measured split next to the configured weights, and
//! each proxy's last report.

use crate::admin::pb;
use crate::text::untrusted;

use super::table::CELL_MAX_CHARS;

/// `n` with thousands separated by commas: `5,212`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn percent(ratio: f64) -> String {
    format!("{:.1}%", ratio * 100.0)
}

/// The fleet the headline gives the share of: the one traffic moves to
/// (weighted, not live), else the live one, else the busiest.
fn headline_fleet(svc: &pb::ServiceStatus) -> Option<&pb::FleetTraffic> {
    let weights = svc.weights.as_ref().map(|w| &w.weights);
    let moving = svc.traffic.iter().rev().find(|f| {
        f.fleet != svc.live
            && weights
                .and_then(|w| w.get(&f.fleet))
                .is_some_and(|w| *w > 0)
    });
    moving
        .or_else(|| svc.traffic.iter().find(|f| f.fleet == svc.live))
        .or_else(|| svc.traffic.iter().max_by_key(|f| f.requests))
}

/// The lines of `teal status` under a service that show its measured
/// traffic; nothing when no proxy reports.
pub(crate) fn measured_lines(svc: &pb::ServiceStatus) -> String {
    let Some(head) = headline_fleet(svc) else {
        return String::new();
    };
    let requests: u64 = svc.traffic.iter().map(|f| f.requests).sum();
    let reporting = svc
        .traffic
        .iter()
        .map(|f| f.proxies_reporting)
        .max()
        .unwrap_or(0);
    let routing = svc
        .traffic
        .iter()
        .map(|f| f.proxies_routing)
        .max()
        .unwrap_or(0);
    let seconds = head.window_ms as f64 / 1000.0;
    let proxies = format!("{reporting} of {routing} proxies");
    let mut text = if requests == 0 {
        format!("  measured:    no requests over {seconds} s, {proxies}\n")
    } else {
        format!(
            "  measured:    {} {} over {seconds} s: {} req, {proxies}\n",
            percent(head.share),
            untrusted(&head.fleet).max_chars(CELL_MAX_CHARS),
            thousands(requests),
        )
    };
    let width = svc
        .traffic
        .iter()
        .map(|f| f.fleet.chars().count().min(CELL_MAX_CHARS))
        .max()
        .unwrap_or(0);
    for f in &svc.traffic {
        text.push_str(&format!(
            "    {:<width$}  {} req ({:.1}/s), {} errors, {} in flight\n",
            untrusted(&f.fleet).max_chars(CELL_MAX_CHARS).to_string(),
            thousands(f.requests),
            f.requests_per_second,
            percent(f.error_ratio),
            thousands(f.in_progress),
        ));
    }
    text
}

/// A proxy's last load report in one table cell: how long ago, and its
/// sums since its load stream opened.
pub(crate) fn load_cell(load: Option<&pb::LoadReport>) -> String {
    let Some(l) = load else {
        return "-".to_owned();
    };
    let Some(age) = l.age_ms else {
        return "no report yet".to_owned();
    };
    let (requests, errors, in_progress) = l.clusters.iter().fold((0u64, 0u64, 0u64), |n, c| {
        (
            n.0.saturating_add(c.requests),
            n.1.saturating_add(c.errors),
            n.2.saturating_add(c.in_progress),
        )
    });
    format!(
        "{:.1}s ago: {} req, {} err, {} in flight",
        age as f64 / 1000.0,
        thousands(requests),
        thousands(errors),
        thousands(in_progress)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fleet(name: &str, requests: u64, errors: u64, share: f64) -> pb::FleetTraffic {
        pb::FleetTraffic {
            fleet: name.into(),
            requests,
            errors,
            requests_per_second: requests as f64 / 10.0,
            error_ratio: if requests == 0 {
                0.0
            } else {
                errors as f64 / requests as f64
            },
            share,
            in_progress: 0,
            proxies_reporting: 20,
            proxies_routing: 20,
            window_ms: 10_000,
        }
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(5212), "5,212");
        assert_eq!(thousands(1_000_000), "1,000,000");
    }

    #[test]
    fn the_measured_split_names_the_fleet_traffic_moves_to() {
        let svc = pb::ServiceStatus {
            name: "web".into(),
            weights: Some(pb::Split {
                weights: [("blue".to_owned(), 50), ("green".to_owned(), 50)].into(),
            }),
            traffic: vec![
                fleet("blue", 2626, 0, 2626.0 / 5212.0),
                fleet("green", 2586, 21, 2586.0 / 5212.0),
            ],
            ..Default::default()
        };
        assert_eq!(
            measured_lines(&svc),
            "  measured:    49.6% green over 10 s: 5,212 req, 20 of 20 proxies\n    \
             blue   2,626 req (262.6/s), 0.0% errors, 0 in flight\n    \
             green  2,586 req (258.6/s), 0.8% errors, 0 in flight\n"
        );
        let quiet = pb::ServiceStatus {
            traffic: vec![fleet("blue", 0, 0, 0.0)],
            live: "blue".into(),
            ..svc.clone()
        };
        assert!(
            measured_lines(&quiet).starts_with("  measured:    no requests over 10 s, 20 of 20")
        );
        let none = pb::ServiceStatus {
            traffic: vec![],
            ..svc
        };
        assert_eq!(measured_lines(&none), "");
    }

    #[test]
    fn a_load_cell_sums_the_clusters() {
        assert_eq!(load_cell(None), "-");
        let l = pb::LoadReport {
            age_ms: Some(400),
            reports: 3,
            clusters: vec![
                pb::ClusterLoad {
                    cluster: "web-blue".into(),
                    requests: 1200,
                    errors: 2,
                    in_progress: 1,
                },
                pb::ClusterLoad {
                    cluster: "web-green".into(),
                    requests: 34,
                    errors: 0,
                    in_progress: 2,
                },
            ],
        };
        assert_eq!(
            load_cell(Some(&l)),
            "0.4s ago: 1,234 req, 2 err, 3 in flight"
        );
        assert_eq!(
            crate::admin::json::load(Some(&l))["clusters"][1]["in_progress"],
            2
        );
    }
}
