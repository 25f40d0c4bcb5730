//! Prometheus metrics, served at `GET /metrics` on the admin port in the
//! Prometheus text format 0.0.4 ([`CONTENT_TYPE`]).
//!
//! The exposition is the Prometheus project's own Rust client,
//! `prometheus-client`: it names, escapes and formats every sample, so
//! teal only says what to count. Counters and the histogram live in
//! [`Metrics`], bumped by the xDS layer through [`Metrics::record_event`]
//! and by the rollout through [`Metrics::observe_convergence`]; gauges are
//! read at scrape time (the admin API asks its backend) into a registry
//! made for that scrape (`Metrics::page`), so a proxy group or a fleet
//! that goes away leaves no stale series behind.
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
//! | `teal_load_requests_total` | counter | `service`, `fleet` | Requests the proxies' load reports (LRS) counted as completed. |
//! | `teal_load_errors_total` | counter | `service`, `fleet` | Of those, the ones that failed (5xx, failed connections, gRPC statuses but OK). |
//! | `teal_load_in_progress` | gauge | `service`, `fleet` | Requests in progress at the proxies' last reports. |
//! | `teal_load_reporting_proxies` | gauge | `service`, `fleet` | Proxies routing the service whose load reports name the fleet. |
//! | `teal_load_routing_proxies` | gauge | `service` | Proxies routing the service (connected, not cordoned). |
//! | `teal_route_status_writes_total` | counter | `result` (`written`, `conflict`, `failed`) | Writes of HTTPRoute status: done, answered 409 (made again from a fresh read), or failed otherwise. |
//! | `teal_event_streams` | gauge | | Dashboard event streams (`GET /v1/events`) open now. |
//! | `teal_event_streams_refused_total` | counter | | Event streams refused at `--max-event-streams`. |
//! | `teal_up` | gauge | | Always 1: the admin API answers. |

use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::rollout::ServiceStatus;
use crate::xds::resources::{PerType, ResourceType};
use crate::xds::{EventSink, StreamEvent};

pub(crate) use prometheus_text::CONTENT_TYPE;

/// Upper bounds of the convergence histogram's buckets, in milliseconds.
pub(crate) const CONVERGENCE_BUCKETS_MS: [u64; 12] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000,
];

/// The `type` label of the xDS counters: `CDS`, `EDS`, `LDS` or `RDS`.
type TypeLabel = [(&'static str, &'static str); 1];
/// One label with a value from outside (a group or service name).
type OneLabel = [(&'static str, String); 1];
/// The `service` and `fleet` labels.
type ServiceFleet = [(&'static str, String); 2];

/// teal's counters. Share one `Arc<Metrics>` between the xDS layer, the
/// rollout and the admin server; every method takes `&self` and is safe
/// to call from many tasks at once.
#[derive(Debug)]
pub struct Metrics {
    sent: Family<TypeLabel, Counter>,
    acks: Family<TypeLabel, Counter>,
    nacks: Family<TypeLabel, Counter>,
    /// The families' counters per type (by [`ResourceType::index`]),
    /// looked up once: a counter shares its value with the family's
    /// series, and every response and ACK of every stream counts here, so
    /// looking it up by label (a hash and a lock) at each cost more than
    /// the count.
    by_type: [PerType<Counter>; 3],
    /// Milliseconds; a clone shares the same buckets.
    convergence: Histogram,
    /// Proxies cordoned now; set whenever the cordons change.
    cordoned: Gauge,
    /// Dashboard event streams open now.
    event_streams: Gauge,
    /// Event streams refused because as many as allowed were open.
    event_streams_refused: Counter,
    /// HTTPRoute status writes, by result.
    route_status_writes: Family<[(&'static str, &'static str); 1], Counter>,
}

/// How an HTTPRoute status write ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatusWrite {
    /// The API server took it.
    Written,
    /// Answered 409: the route changed since it was read.
    Conflict,
    /// Any other failure.
    Failed,
}

impl StatusWrite {
    fn label(self) -> [(&'static str, &'static str); 1] {
        [(
            "result",
            match self {
                StatusWrite::Written => "written",
                StatusWrite::Conflict => "conflict",
                StatusWrite::Failed => "failed",
            },
        )]
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// New, all zero. Every `type` is there from the start, so a scrape
    /// shows 0 rather than no series before the first event.
    pub fn new() -> Metrics {
        let (sent, acks, nacks) = (Family::default(), Family::default(), Family::default());
        let by_type = [&sent, &acks, &nacks].map(|family: &Family<TypeLabel, Counter>| {
            PerType::from_fn(|ty| family.get_or_create(&type_label(ty)).clone())
        });
        Metrics {
            sent,
            acks,
            nacks,
            by_type,
            convergence: Histogram::new(CONVERGENCE_BUCKETS_MS.map(|ms| ms as f64)),
            cordoned: Gauge::default(),
            event_streams: Gauge::default(),
            event_streams_refused: Counter::default(),
            route_status_writes: {
                // Every result from the start: 0 rather than no series.
                let family = Family::default();
                for r in [
                    StatusWrite::Written,
                    StatusWrite::Conflict,
                    StatusWrite::Failed,
                ] {
                    drop(family.get_or_create(&r.label()));
                }
                family
            },
        }
    }

    /// Counts one HTTPRoute status write.
    #[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
    pub(crate) fn count_status_write(&self, result: StatusWrite) {
        self.route_status_writes
            .get_or_create(&result.label())
            .inc();
    }

    /// Counts what a stream did: responses sent, ACKs and NACKs.
    pub fn record_event(&self, event: &StreamEvent) {
        let (family, ty) = match event {
            StreamEvent::Sent { ty, .. } => (0, ty),
            StreamEvent::Acked { ty, .. } => (1, ty),
            StreamEvent::Nacked { ty, .. } => (2, ty),
            StreamEvent::StaleNonce { .. } => return,
        };
        self.by_type[family][*ty].inc();
    }

    /// Records how long a version took from first push to last ACK.
    pub fn observe_convergence(&self, took: Duration) {
        // From nanoseconds, so whole milliseconds stay exact in the sum.
        self.convergence.observe(took.as_nanos() as f64 / 1e6);
    }

    /// The counters and histogram in Prometheus text format, appended to
    /// `out`.
    #[cfg(test)]
    pub(crate) fn render_counters(&self, out: &mut String) {
        let mut registry = Registry::default();
        self.register_counters(&mut registry);
        encode(&registry, out);
    }

    /// Records how many proxies are cordoned.
    pub(crate) fn set_cordoned(&self, count: usize) {
        self.cordoned.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Counts an event stream opening (`true`) or closing (`false`).
    pub(crate) fn event_stream(&self, open: bool) {
        if open {
            self.event_streams.inc();
        } else {
            self.event_streams.dec();
        }
    }

    /// Counts an event stream refused at the limit.
    pub(crate) fn event_stream_refused(&self) {
        self.event_streams_refused.inc();
    }

    /// The page for proxies in `groups` (one entry per stream) and
    /// `services`, with cost windows measured up to `now`.
    pub(crate) fn page(
        &self,
        groups: &[String],
        services: &[ServiceStatus],
        now: SystemTime,
    ) -> String {
        let mut registry = Registry::default();
        registry.register("teal_up", "The admin API answers", ConstGauge::new(1_i64));

        let proxies = Family::<OneLabel, Gauge>::default();
        for group in groups {
            proxies.get_or_create(&[("group", group.clone())]).inc();
        }
        registry.register(
            "teal_connected_proxies",
            "Connected proxy streams per proxy group",
            proxies,
        );
        registry.register(
            "teal_cordoned_proxies",
            "Proxies cordoned: operations do not wait for them",
            self.cordoned.clone(),
        );

        registry.register(
            "teal_event_streams",
            "Dashboard event streams open",
            self.event_streams.clone(),
        );
        registry.register(
            "teal_event_streams_refused",
            "Dashboard event streams refused at --max-event-streams",
            self.event_streams_refused.clone(),
        );

        self.register_counters(&mut registry);

        let (weight, live) = (
            Family::<ServiceFleet, Gauge>::default(),
            Family::<ServiceFleet, Gauge>::default(),
        );
        let both = Family::<OneLabel, Gauge<f64, AtomicU64>>::default();
        for s in services {
            for (fleet, w) in &s.weights {
                let labels = [("service", s.name.clone()), ("fleet", fleet.clone())];
                weight.get_or_create(&labels).set(i64::from(*w));
            }
            live.get_or_create(&[("service", s.name.clone()), ("fleet", s.live.clone())])
                .set(1);
            if let Some(since) = s.both_fleets_since {
                let secs = now.duration_since(since).unwrap_or_default().as_secs_f64();
                both.get_or_create(&[("service", s.name.clone())]).set(secs);
            }
        }
        registry.register(
            "teal_service_weight",
            "Traffic weight (0-100) of each fleet",
            weight,
        );
        registry.register("teal_service_live", "1 for each service's live fleet", live);
        registry.register(
            "teal_service_both_fleets_seconds",
            "How long more than one fleet has had endpoints",
            both,
        );
        register_load(&mut registry, services);

        let mut out = String::new();
        encode(&registry, &mut out);
        out
    }

    /// Adds the long-lived metrics to a scrape's registry. The clones
    /// share their values with `self`.
    fn register_counters(&self, registry: &mut Registry) {
        // prometheus-client appends `_total` to a counter's name itself.
        registry.register(
            "teal_xds_responses_sent",
            "Discovery responses sent",
            self.sent.clone(),
        );
        registry.register(
            "teal_xds_acks",
            "Responses proxies ACKed",
            self.acks.clone(),
        );
        registry.register(
            "teal_xds_nacks",
            "Responses proxies NACKed",
            self.nacks.clone(),
        );
        registry.register(
            "teal_convergence_milliseconds",
            "First push to last ACK of a rollout's version, in milliseconds",
            self.convergence.clone(),
        );
        registry.register(
            "teal_route_status_writes",
            "HTTPRoute status writes, by result",
            self.route_status_writes.clone(),
        );
    }
}

/// What the proxies' load reports say, per service and fleet: never per
/// proxy, so a fleet of thousands of proxies is a handful of series.
fn register_load(registry: &mut Registry, services: &[ServiceStatus]) {
    let (requests, errors) = (
        Family::<ServiceFleet, Counter>::default(),
        Family::<ServiceFleet, Counter>::default(),
    );
    let (in_progress, reporting) = (
        Family::<ServiceFleet, Gauge>::default(),
        Family::<ServiceFleet, Gauge>::default(),
    );
    let routing = Family::<OneLabel, Gauge>::default();
    let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    for s in services {
        for f in &s.traffic {
            let labels = [("service", s.name.clone()), ("fleet", f.fleet.clone())];
            requests.get_or_create(&labels).inc_by(f.total_requests);
            errors.get_or_create(&labels).inc_by(f.total_errors);
            in_progress.get_or_create(&labels).set(gauge(f.in_progress));
            reporting
                .get_or_create(&labels)
                .set(gauge(f.proxies_reporting as u64));
            routing
                .get_or_create(&[("service", s.name.clone())])
                .set(gauge(f.proxies_routing as u64));
        }
    }
    registry.register(
        "teal_load_requests",
        "Requests the proxies' load reports counted as completed",
        requests,
    );
    registry.register(
        "teal_load_errors",
        "Requests the proxies' load reports counted as failed",
        errors,
    );
    registry.register(
        "teal_load_in_progress",
        "Requests in progress at the proxies' last load reports",
        in_progress,
    );
    registry.register(
        "teal_load_reporting_proxies",
        "Proxies routing the service whose load reports name the fleet",
        reporting,
    );
    registry.register(
        "teal_load_routing_proxies",
        "Proxies routing the service",
        routing,
    );
}

fn type_label(ty: ResourceType) -> TypeLabel {
    [("type", ty.short_name())]
}

/// Appends `registry` in the Prometheus text format to `out`.
fn encode(registry: &Registry, out: &mut String) {
    // Writing to a `String` cannot fail, and the encoder fails only when
    // its writer does.
    if let Err(e) = prometheus_text::encode(out, registry) {
        tracing::warn!(error = %e, "metrics: encoding failed");
    }
}

impl EventSink for Metrics {
    fn record(&self, event: &StreamEvent) {
        self.record_event(event);
    }
}

#[cfg(test)]
#[path = "metrics_tests.rs"]
mod tests;
