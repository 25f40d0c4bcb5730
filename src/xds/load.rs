//! What the proxies' own load reports (LRS) say their traffic did.
//!
//! Envoy and proxyless gRPC clients report, per cluster teal asks for and
//! per interval, the *deltas* of requests that succeeded, failed and were
//! issued, and a *snapshot* of requests in progress (see `lrs`, which
//! speaks the protocol). The [`LoadStore`] keeps, per proxy (by node id)
//! and per fleet cluster, the sums since its load stream opened and how
//! many reports in a row said nothing was in progress; and per group and
//! cluster, one-second buckets of the last [`WINDOW_BUCKETS`] seconds for
//! the measured split. Memory is bounded per proxy by the clusters teal
//! asks it for ([`LoadTargets`]), and a proxy whose load stream ends takes
//! its counts with it.
//!
//! Reports are hostile until checked: only clusters teal asked the proxy's
//! group for are counted (others are ignored and counted as such), counts
//! past [`MAX_REQUESTS_PER_REPORT`] are cut there, and a stream sending
//! more than its rate has its excess reports dropped. The lock is a plain
//! mutex held for a map update, never across an `.await`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

#[cfg(test)]
use envoy_types::pb::envoy::config::endpoint::v3::ClusterStats;
use tokio::sync::watch;

/// Per report and cluster, the most requests (or requests in progress)
/// counted; more is cut to this. A proxy serving a million requests per
/// second reporting every minute stays under it; a counter sent as a lie
/// cannot overflow a sum or outweigh every honest proxy for years.
pub(crate) const MAX_REQUESTS_PER_REPORT: u64 = 1 << 36;

/// One-second buckets kept per group and cluster: the longest window the
/// measured split can be taken over.
pub(crate) const WINDOW_BUCKETS: usize = 120;

/// What a group's proxies are asked to report: its services' fleet
/// clusters, each with the service and fleet it carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LoadTargets {
    /// By group, by cluster name.
    pub(crate) groups: BTreeMap<String, BTreeMap<String, Target>>,
}

/// A fleet cluster load is reported for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Target {
    pub(crate) service: String,
    pub(crate) fleet: String,
}

impl LoadTargets {
    /// The clusters `group`'s proxies are asked for, in name order.
    pub(crate) fn clusters_of(&self, group: &str) -> Vec<String> {
        self.groups
            .get(group)
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn target(&self, group: &str, cluster: &str) -> Option<&Target> {
        self.groups.get(group)?.get(cluster)
    }
}

/// One cluster of one report, summed over its localities.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ClusterReport {
    pub(crate) cluster: String,
    /// Requests that completed without error (Envoy counts 4xx here).
    pub(crate) success: u64,
    /// Requests that failed: 5xx, a failed connection, a gRPC status
    /// other than OK (proxyless clients).
    pub(crate) errors: u64,
    /// Requests sent upstream.
    pub(crate) issued: u64,
    /// Requests in progress when the report was made.
    pub(crate) in_progress: u64,
}

impl ClusterReport {
    /// Sums one cluster's locality stats, each count cut at
    /// [`MAX_REQUESTS_PER_REPORT`]; `true` with it if a count was cut.
    /// Load streams sum them on the wire instead (`lrs_codec`); this is
    /// what that is tested against.
    #[cfg(test)]
    pub(crate) fn of(stats: &ClusterStats) -> (ClusterReport, bool) {
        let mut r = ClusterReport {
            cluster: stats.cluster_name.clone(),
            ..ClusterReport::default()
        };
        for l in &stats.upstream_locality_stats {
            r.success = r.success.saturating_add(l.total_successful_requests);
            r.errors = r.errors.saturating_add(l.total_error_requests);
            r.issued = r.issued.saturating_add(l.total_issued_requests);
            r.in_progress = r.in_progress.saturating_add(l.total_requests_in_progress);
        }
        r.bounded()
    }

    /// This report with each count cut at [`MAX_REQUESTS_PER_REPORT`];
    /// `true` with it if a count was cut.
    pub(crate) fn bounded(mut self) -> (ClusterReport, bool) {
        let mut cut = false;
        for n in [
            &mut self.success,
            &mut self.errors,
            &mut self.issued,
            &mut self.in_progress,
        ] {
            if *n > MAX_REQUESTS_PER_REPORT {
                *n = MAX_REQUESTS_PER_REPORT;
                cut = true;
            }
        }
        (self, cut)
    }

    /// Requests that completed: the denominator of an error ratio (a
    /// refused connection is an error that was never issued, so issued
    /// requests are not).
    pub(crate) fn completed(&self) -> u64 {
        self.success.saturating_add(self.errors)
    }
}

/// One proxy's counts for one cluster since its load stream opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ClusterCounters {
    /// Requests completed (succeeded or failed).
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    /// In progress at the last report.
    pub(crate) in_progress: u64,
    /// Reports in a row, up to the last, that had nothing in progress.
    pub(crate) idle_reports: u32,
}

/// One proxy's load, as readers see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProxyLoad {
    pub(crate) node: Arc<str>,
    pub(crate) group: String,
    /// The replica it reports to, when not this one.
    pub(crate) replica: Option<String>,
    /// Reports taken since its load stream opened.
    pub(crate) reports: u64,
    /// When the last was taken (`None`: none yet).
    pub(crate) last_report: Option<Instant>,
    /// Per cluster asked for, the sums since the stream opened; a cluster
    /// appears once a report named it. Shared, so a copy of every proxy's
    /// load (what a status or the dashboard takes, several times a second)
    /// costs no copy of its clusters; a report changes its own.
    pub(crate) clusters: Arc<BTreeMap<String, ClusterCounters>>,
}

/// What became of one report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Taken {
    /// Clusters counted.
    pub(crate) counted: usize,
    /// Clusters ignored: not asked of this proxy's group.
    pub(crate) ignored: Vec<String>,
    /// The report came faster than the stream's rate and was dropped.
    pub(crate) dropped: bool,
    /// The stream was replaced by a newer one of the same node, or closed.
    pub(crate) stale: bool,
}

/// Identifies one open load stream (see [`LoadStore::open`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LoadStreamId {
    node: Arc<str>,
    serial: u64,
}

/// Measured traffic of one fleet over a window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct FleetMeasured {
    pub(crate) fleet: String,
    /// Requests completed.
    pub(crate) requests: u64,
    pub(crate) errors: u64,
}

#[derive(Debug)]
struct Entry {
    serial: u64,
    load: ProxyLoad,
    /// Start of the second the rate counts reports in, and how many.
    rate_second: Option<Instant>,
    rate_count: u32,
}

/// A group's cluster's counts per second, newest last.
#[derive(Debug, Default)]
struct Window {
    /// (second since the store's epoch, requests, errors)
    buckets: VecDeque<(u64, u64, u64)>,
}

impl Window {
    fn add(&mut self, second: u64, requests: u64, errors: u64) {
        match self.buckets.back_mut() {
            Some(b) if b.0 == second => {
                b.1 = b.1.saturating_add(requests);
                b.2 = b.2.saturating_add(errors);
            }
            _ => {
                self.buckets.push_back((second, requests, errors));
                while self.buckets.len() > WINDOW_BUCKETS {
                    self.buckets.pop_front();
                }
            }
        }
    }

    /// Sums of the buckets in the last `seconds` seconds up to `now_second`.
    fn sum(&self, now_second: u64, seconds: u64) -> (u64, u64) {
        let from = now_second.saturating_sub(seconds.saturating_sub(1));
        self.buckets
            .iter()
            .filter(|b| b.0 >= from && b.0 <= now_second)
            .fold((0, 0), |(r, e), b| {
                (r.saturating_add(b.1), e.saturating_add(b.2))
            })
    }
}

#[derive(Debug, Default)]
struct Inner {
    targets: Arc<LoadTargets>,
    /// This replica's proxies, by node id.
    local: HashMap<Arc<str>, Entry>,
    /// Other replicas' proxies as they last published them, by replica.
    remote: HashMap<String, Vec<ProxyLoad>>,
    /// By (group, cluster).
    windows: HashMap<(String, String), Window>,
    /// Per service and fleet, requests and errors this replica's proxies
    /// reported since teal started (or since the fleet was last asked
    /// for): the counters of `/metrics`.
    totals: HashMap<Target, (u64, u64)>,
    next_serial: u64,
}

/// The default of `--load-report-interval`.
pub(crate) const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// The default of `--max-load-reports-per-second`: twice what Envoy sends
/// at the shortest interval teal asks for (100 ms), so only a client that
/// ignores the interval meets it.
pub(crate) const DEFAULT_MAX_REPORTS_PER_SEC: u32 = 20;

/// Every proxy's load reports (see the module docs).
#[derive(Debug)]
pub(crate) struct LoadStore {
    inner: Mutex<Inner>,
    /// Seconds of the windows count from here.
    epoch: Instant,
    /// At most this many reports per second per stream are taken.
    max_reports_per_sec: AtomicU32,
    /// How often proxies are asked to report, in milliseconds.
    interval_ms: AtomicU64,
    targets: watch::Sender<Arc<LoadTargets>>,
    /// Bumped after every report taken or proxy gone.
    generation: watch::Sender<u64>,
}

impl Default for LoadStore {
    fn default() -> Self {
        LoadStore::new(DEFAULT_MAX_REPORTS_PER_SEC)
    }
}

impl LoadStore {
    pub(crate) fn new(max_reports_per_sec: u32) -> LoadStore {
        let interval_ms = u64::try_from(DEFAULT_REPORT_INTERVAL.as_millis()).unwrap_or(1000);
        LoadStore {
            inner: Mutex::default(),
            epoch: Instant::now(),
            max_reports_per_sec: AtomicU32::new(max_reports_per_sec.max(1)),
            interval_ms: AtomicU64::new(interval_ms),
            targets: watch::Sender::new(Arc::default()),
            generation: watch::Sender::new(0),
        }
    }

    /// Sets how often proxies are asked to report (`--load-report-interval`)
    /// and how many reports per second one stream may send
    /// (`--max-load-reports-per-second`).
    pub(crate) fn configure(&self, interval: Duration, max_reports_per_sec: u32) {
        let ms = u64::try_from(interval.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.interval_ms.store(ms, Ordering::Relaxed);
        self.max_reports_per_sec
            .store(max_reports_per_sec.max(1), Ordering::Relaxed);
    }

    /// How often proxies are asked to report.
    pub(crate) fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.load(Ordering::Relaxed))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while the lock was held left nothing half-written that
        // matters more than keeping the counts readable.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Sets what each group is asked to report (the controller, at every
    /// config it serves); counts of clusters no longer asked for go.
    pub(crate) fn set_targets(&self, targets: LoadTargets) {
        let targets = Arc::new(targets);
        {
            let mut inner = self.lock();
            if *inner.targets == *targets {
                return;
            }
            inner.targets = targets.clone();
            for e in inner.local.values_mut() {
                let group = e.load.group.clone();
                Arc::make_mut(&mut e.load.clusters)
                    .retain(|c, _| targets.target(&group, c).is_some());
            }
            inner
                .windows
                .retain(|(g, c), _| targets.target(g, c).is_some());
            let asked: std::collections::HashSet<&Target> =
                targets.groups.values().flat_map(|c| c.values()).collect();
            inner.totals.retain(|t, _| asked.contains(t));
        }
        self.targets.send_replace(targets);
        self.bump();
    }

    /// The current targets, and their changes.
    pub(crate) fn watch_targets(&self) -> watch::Receiver<Arc<LoadTargets>> {
        self.targets.subscribe()
    }

    /// Wakes after any report taken or proxy gone.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// A load stream of `node` (of `group`) opened: it replaces an older
    /// one of the same node, whose counts go.
    pub(crate) fn open(&self, node: &str, group: &str) -> LoadStreamId {
        let node: Arc<str> = Arc::from(node);
        let mut inner = self.lock();
        inner.next_serial += 1;
        let serial = inner.next_serial;
        inner.local.insert(
            node.clone(),
            Entry {
                serial,
                load: ProxyLoad {
                    node: node.clone(),
                    group: group.to_owned(),
                    replica: None,
                    reports: 0,
                    last_report: None,
                    clusters: Arc::default(),
                },
                rate_second: None,
                rate_count: 0,
            },
        );
        drop(inner);
        self.bump();
        LoadStreamId { node, serial }
    }

    /// The stream ended: its proxy's counts go, unless a newer stream of
    /// the node replaced it.
    pub(crate) fn close(&self, id: &LoadStreamId) {
        let mut inner = self.lock();
        if inner
            .local
            .get(&id.node)
            .is_some_and(|e| e.serial == id.serial)
        {
            inner.local.remove(&id.node);
            drop(inner);
            self.bump();
        }
    }

    /// Takes one report of stream `id` at `now`.
    pub(crate) fn report(
        &self,
        id: &LoadStreamId,
        clusters: &[ClusterReport],
        now: Instant,
    ) -> Taken {
        let mut taken = Taken::default();
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let Some(e) = inner
            .local
            .get_mut(&id.node)
            .filter(|e| e.serial == id.serial)
        else {
            taken.stale = true;
            return taken;
        };
        match e.rate_second {
            Some(start) if now.saturating_duration_since(start) < Duration::from_secs(1) => {
                if e.rate_count >= self.max_reports_per_sec.load(Ordering::Relaxed) {
                    taken.dropped = true;
                    return taken;
                }
                e.rate_count += 1;
            }
            _ => {
                e.rate_second = Some(now);
                e.rate_count = 1;
            }
        }
        let group = e.load.group.clone();
        let asked = inner.targets.groups.get(&group);
        // Every cluster asked for counts in this report: one it leaves out
        // had nothing to say (no traffic, nothing in progress).
        if let Some(asked) = asked {
            let counters = Arc::make_mut(&mut e.load.clusters);
            for (cluster, target) in asked {
                let c = counters.entry(cluster.clone()).or_default();
                let r = clusters.iter().find(|r| &r.cluster == cluster);
                let (requests, errors, in_progress) = r
                    .map(|r| (r.completed(), r.errors, r.in_progress))
                    .unwrap_or_default();
                c.requests = c.requests.saturating_add(requests);
                c.errors = c.errors.saturating_add(errors);
                c.in_progress = in_progress;
                c.idle_reports = if in_progress == 0 {
                    c.idle_reports.saturating_add(1)
                } else {
                    0
                };
                if r.is_some() {
                    taken.counted += 1;
                }
                if requests > 0 {
                    inner
                        .windows
                        .entry((group.clone(), cluster.clone()))
                        .or_default()
                        .add(second, requests, errors);
                    let total = inner.totals.entry(target.clone()).or_default();
                    total.0 = total.0.saturating_add(requests);
                    total.1 = total.1.saturating_add(errors);
                }
            }
        }
        for r in clusters {
            if !asked.is_some_and(|a| a.contains_key(&r.cluster)) {
                taken.ignored.push(r.cluster.clone());
            }
        }
        e.load.reports += 1;
        e.load.last_report = Some(now);
        self.bump();
        taken
    }

    /// Replaces what replica `replica` published of its proxies' load
    /// (`None`: it published nothing, or is gone).
    ///
    /// What their counts grew by since the replica's last set goes into
    /// the windows at `now`, so the measured split counts every replica's
    /// proxies (as late as the replica's last round). The first set of a
    /// replica only marks where its counts start: they are sums over its
    /// proxies' whole streams, not this second's.
    pub(crate) fn set_remote(&self, replica: &str, proxies: Option<Vec<ProxyLoad>>, now: Instant) {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let mut inner = self.lock();
        let inner = &mut *inner;
        let old = match proxies {
            Some(p) => {
                let before = inner.remote.insert(replica.to_owned(), p);
                let first = before.is_none();
                let before = before.unwrap_or_default();
                let before: HashMap<&str, &ProxyLoad> =
                    before.iter().map(|p| (&*p.node, p)).collect();
                for p in inner.remote.get(replica).into_iter().flatten() {
                    for (cluster, c) in p.clusters.iter() {
                        if inner.targets.target(&p.group, cluster).is_none() {
                            continue;
                        }
                        // Counts only grow while a load stream lasts; a
                        // smaller one is a new stream, counted from zero.
                        let (requests, errors) =
                            match before.get(&*p.node).and_then(|b| b.clusters.get(cluster)) {
                                Some(b) if b.requests <= c.requests && b.errors <= c.errors => {
                                    (c.requests - b.requests, c.errors - b.errors)
                                }
                                _ => (c.requests, c.errors),
                            };
                        if requests > 0 && !first {
                            inner
                                .windows
                                .entry((p.group.clone(), cluster.clone()))
                                .or_default()
                                .add(second, requests, errors);
                        }
                    }
                }
                None
            }
            None => inner.remote.remove(replica),
        };
        drop(old);
        self.bump();
    }

    /// Every proxy's load, this replica's and the others' as published, of
    /// the groups `wanted` accepts.
    pub(crate) fn proxies(&self, wanted: impl Fn(&str) -> bool) -> Vec<ProxyLoad> {
        let inner = self.lock();
        inner
            .local
            .values()
            .map(|e| &e.load)
            .chain(inner.remote.values().flatten())
            .filter(|p| wanted(&p.group))
            .cloned()
            .collect()
    }

    /// This replica's own proxies' load (what a follower publishes).
    pub(crate) fn local(&self) -> Vec<ProxyLoad> {
        self.lock().local.values().map(|e| e.load.clone()).collect()
    }

    #[cfg(test)]
    /// One proxy's load, by node id (this replica's first).
    pub(crate) fn proxy(&self, node: &str) -> Option<ProxyLoad> {
        let inner = self.lock();
        inner.local.get(node).map(|e| e.load.clone()).or_else(|| {
            inner
                .remote
                .values()
                .flatten()
                .find(|p| &*p.node == node)
                .cloned()
        })
    }

    /// Per fleet of `service`, the requests and errors this replica's
    /// proxies reported since it was first asked for (counters: they
    /// never go down while the fleet is asked for).
    pub(crate) fn totals(&self, service: &str) -> BTreeMap<String, (u64, u64)> {
        self.lock()
            .totals
            .iter()
            .filter(|(t, _)| t.service == service)
            .map(|(t, n)| (t.fleet.clone(), *n))
            .collect()
    }

    /// `service`'s traffic per fleet over the last `window` (whole
    /// seconds, at most [`WINDOW_BUCKETS`]) up to `now`, over every group:
    /// this replica's proxies' reports, and (on the leader) what the other
    /// replicas' counts grew by.
    pub(crate) fn measured(
        &self,
        service: &str,
        window: Duration,
        now: Instant,
    ) -> Vec<FleetMeasured> {
        let second = now.saturating_duration_since(self.epoch).as_secs();
        let seconds = window.as_secs().clamp(1, WINDOW_BUCKETS as u64);
        let inner = self.lock();
        let mut by_fleet: BTreeMap<&str, FleetMeasured> = BTreeMap::new();
        for (group, clusters) in &inner.targets.groups {
            for (cluster, t) in clusters.iter().filter(|(_, t)| t.service == service) {
                let m = by_fleet.entry(&t.fleet).or_insert_with(|| FleetMeasured {
                    fleet: t.fleet.clone(),
                    ..FleetMeasured::default()
                });
                if let Some(w) = inner.windows.get(&(group.clone(), cluster.clone())) {
                    let (r, e) = w.sum(second, seconds);
                    m.requests = m.requests.saturating_add(r);
                    m.errors = m.errors.saturating_add(e);
                }
            }
        }
        by_fleet.into_values().collect()
    }
}

#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;
