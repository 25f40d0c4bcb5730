//! Prometheus metrics, served as text at `GET /metrics` on the admin port.
//!
//! Counters are atomics bumped by the xDS layer through
//! [`Metrics::record_event`] and by the rollout through
//! [`Metrics::observe_convergence`]; gauges are read from the
//! [`Backend`] at scrape time.
//!
//! | Metric | Type | Labels | Meaning |
//! |---|---|---|---|
//! | `teal_connected_proxies` | gauge | `group` | Connected proxy streams per proxy group (`node.cluster`; empty before the first request). |
//! | `teal_xds_responses_sent_total` | counter | `type` (`CDS`, `EDS`, `LDS`, `RDS`) | Discovery responses sent. |
//! | `teal_xds_acks_total` | counter | `type` | Responses proxies ACKed. |
//! | `teal_xds_nacks_total` | counter | `type` | Responses proxies NACKed (rejected). |
//! | `teal_convergence_milliseconds` | histogram | | Time from the first push of a rollout's version to the last proxy's ACK. |
//! | `teal_service_weight` | gauge | `service`, `fleet` | Current traffic weight (0–100) of each fleet. |
//! | `teal_service_live` | gauge | `service`, `fleet` | 1 for the service's live fleet. |
//! | `teal_service_both_fleets_seconds` | gauge | `service` | How long more than one fleet has had endpoints (the cost window); absent when only one has. |
//! | `teal_up` | gauge | | Always 1: the admin API answers. |

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::rollout::Backend;
use crate::xds::{EventSink, StreamEvent};

/// Upper bounds of the convergence histogram's buckets, in milliseconds.
pub const CONVERGENCE_BUCKETS_MS: [u64; 12] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
];

/// teal's counters. Share one `Arc<Metrics>` between the xDS layer, the
/// rollout and the admin server.
#[derive(Debug, Default)]
pub struct Metrics {
    sent: [AtomicU64; 4],
    acks: [AtomicU64; 4],
    nacks: [AtomicU64; 4],
    /// Non-cumulative counts per bucket; the last one is `+Inf`.
    convergence: [AtomicU64; CONVERGENCE_BUCKETS_MS.len() + 1],
    convergence_sum_ms: AtomicU64,
}

const TYPES: [&str; 4] = ["CDS", "EDS", "LDS", "RDS"];

impl Metrics {
    /// New, all zero.
    pub fn new() -> Metrics {
        Metrics::default()
    }

    /// Counts what a stream did: responses sent, ACKs and NACKs.
    pub fn record_event(&self, event: &StreamEvent) {
        let (counters, ty) = match event {
            StreamEvent::Sent { ty, .. } => (&self.sent, ty),
            StreamEvent::Acked { ty, .. } => (&self.acks, ty),
            StreamEvent::Nacked { ty, .. } => (&self.nacks, ty),
            StreamEvent::StaleNonce { .. } => return,
        };
        counters[ty.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Records how long a version took from first push to last ACK.
    pub fn observe_convergence(&self, took: Duration) {
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let bucket = CONVERGENCE_BUCKETS_MS
            .iter()
            .position(|le| ms <= *le)
            .unwrap_or(CONVERGENCE_BUCKETS_MS.len());
        self.convergence[bucket].fetch_add(1, Ordering::Relaxed);
        self.convergence_sum_ms.fetch_add(ms, Ordering::Relaxed);
    }

    /// The counters and histogram in Prometheus text format.
    pub fn render_counters(&self, out: &mut String) {
        for (name, help, counters) in [
            (
                "teal_xds_responses_sent_total",
                "Discovery responses sent.",
                &self.sent,
            ),
            (
                "teal_xds_acks_total",
                "Responses proxies ACKed.",
                &self.acks,
            ),
            (
                "teal_xds_nacks_total",
                "Responses proxies NACKed.",
                &self.nacks,
            ),
        ] {
            header(out, name, help, "counter");
            for (ty, c) in TYPES.iter().zip(counters) {
                let _ = writeln!(out, "{name}{{type=\"{ty}\"}} {}", c.load(Ordering::Relaxed));
            }
        }
        let name = "teal_convergence_milliseconds";
        header(
            out,
            name,
            "First push to last ACK of a rollout's version, in milliseconds.",
            "histogram",
        );
        let mut cumulative = 0;
        for (i, c) in self.convergence.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = CONVERGENCE_BUCKETS_MS
                .get(i)
                .map_or_else(|| "+Inf".to_owned(), u64::to_string);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let sum = self.convergence_sum_ms.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }

    /// The whole `/metrics` page: counters plus gauges read from `backend`.
    pub async fn render(&self, backend: &dyn Backend) -> String {
        let mut out = String::new();
        header(&mut out, "teal_up", "The admin API answers.", "gauge");
        out.push_str("teal_up 1\n");

        let mut groups: BTreeMap<String, u64> = BTreeMap::new();
        for p in backend.proxies() {
            *groups
                .entry(p.group().unwrap_or("").to_owned())
                .or_default() += 1;
        }
        let name = "teal_connected_proxies";
        header(
            &mut out,
            name,
            "Connected proxy streams per proxy group.",
            "gauge",
        );
        for (group, n) in &groups {
            let _ = writeln!(out, "{name}{{group=\"{}\"}} {n}", escape(group));
        }

        self.render_counters(&mut out);

        match backend.status(None).await {
            Ok(view) => render_services(&mut out, &view.services),
            Err(e) => tracing::warn!(error = %e, "metrics: service status unavailable"),
        }
        out
    }
}

fn render_services(out: &mut String, services: &[crate::rollout::ServiceStatus]) {
    let name = "teal_service_weight";
    header(out, name, "Traffic weight (0-100) of each fleet.", "gauge");
    for s in services {
        for (fleet, w) in &s.weights {
            let (svc, fleet) = (escape(&s.name), escape(fleet));
            let _ = writeln!(out, "{name}{{service=\"{svc}\",fleet=\"{fleet}\"}} {w}");
        }
    }
    let name = "teal_service_live";
    header(out, name, "1 for each service's live fleet.", "gauge");
    for s in services {
        let (svc, fleet) = (escape(&s.name), escape(&s.live));
        let _ = writeln!(out, "{name}{{service=\"{svc}\",fleet=\"{fleet}\"}} 1");
    }
    let name = "teal_service_both_fleets_seconds";
    header(
        out,
        name,
        "How long more than one fleet has had endpoints.",
        "gauge",
    );
    let now = SystemTime::now();
    for s in services {
        if let Some(since) = s.both_fleets_since {
            let secs = now.duration_since(since).unwrap_or_default().as_secs_f64();
            let _ = writeln!(out, "{name}{{service=\"{}\"}} {secs:.3}", escape(&s.name));
        }
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value: backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl EventSink for Metrics {
    fn record(&self, event: &StreamEvent) {
        self.record_event(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::ResourceType;

    #[test]
    fn counts_events_and_buckets_convergence() {
        let m = Metrics::new();
        m.record_event(&StreamEvent::Sent {
            ty: ResourceType::Route,
            version: "1".into(),
            nonce: "1".into(),
            resources: 1,
        });
        m.record_event(&StreamEvent::Nacked {
            ty: ResourceType::Cluster,
            version: "1".into(),
            message: "bad".into(),
        });
        m.observe_convergence(Duration::from_millis(30));
        m.observe_convergence(Duration::from_secs(120));
        let mut out = String::new();
        m.render_counters(&mut out);
        assert!(out.contains("teal_xds_responses_sent_total{type=\"RDS\"} 1\n"));
        assert!(out.contains("teal_xds_nacks_total{type=\"CDS\"} 1\n"));
        assert!(out.contains("teal_xds_acks_total{type=\"CDS\"} 0\n"));
        assert!(out.contains("teal_convergence_milliseconds_bucket{le=\"25\"} 0\n"));
        assert!(out.contains("teal_convergence_milliseconds_bucket{le=\"50\"} 1\n"));
        assert!(out.contains("teal_convergence_milliseconds_bucket{le=\"+Inf\"} 2\n"));
        assert!(out.contains("teal_convergence_milliseconds_sum 120030\n"));
        assert!(out.contains("teal_convergence_milliseconds_count 2\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
