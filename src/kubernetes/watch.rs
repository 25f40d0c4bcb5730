//! Watching a service's Kubernetes fleets and handing their endpoints on,
//! coalesced.
//!
//! One task per teal service watches the EndpointSlices of each of its
//! Kubernetes fleets with kube-runtime's [`watcher`]: a paged list, then a
//! watch from the list's `resourceVersion` with bookmarks, resumed from the
//! last one seen when the connection ends, and a fresh list when the API
//! server answers `410 Gone` (as an `ERROR` event; an HTTP 410 on the
//! watch request itself, which the watcher would retry with the same stale
//! version forever, makes this task start the fleet's watcher anew). Errors
//! are retried with the watcher's default backoff (0.8 s up to 30 s).
//!
//! A relist is applied whole: the slices it lists replace the fleet's once
//! the list is done (`InitDone`), never a half-listed fleet.
//!
//! Coalescing: a change is handed on at once if nothing was handed on for
//! this service in the last `window` (100 ms by default), else when that
//! window ends, with every change made meanwhile. So a pod going unready
//! leaves within one watch event plus at most one window, and a rolling
//! deploy of 100 pods is a handful of pushes, not 100. Sets equal to the
//! last one handed on are not handed on again.
//!
//! Bounds: at most `max_slices` slices and `max_endpoints` endpoints per
//! fleet (`--kube-max-slices`, `--kube-max-endpoints`). Past either, or on
//! a slice teal cannot use, the fleet keeps its last good endpoints, the
//! problem is logged (once per new problem); a fleet past the
//! slice bound forgets what it saw and lists again after
//! `OVERFLOW_RELIST`.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_slices};
use kube::{Api, Client};
use tokio::time::Instant;

use super::limits::KubeLimits;
use super::slices::{FleetEndpoints, SliceEndpoints, SliceError, fleet_endpoints, slice_endpoints};
use crate::config::KubernetesFleet;

/// How long a fleet that went past `max_slices` waits before listing
/// again (its view is incomplete until then, and listing at once would
/// meet the same slices).
pub(crate) const OVERFLOW_RELIST: Duration = Duration::from_secs(30);

/// How long a set the sink refused waits before it is offered again (a
/// reload that adds the fleet may be deferred behind a rollout, and the
/// controller does not know the fleet until it is applied).
pub const REFUSED_RETRY: Duration = Duration::from_secs(2);

/// Where a watcher's endpoint sets go: the controller in `teal serve`, a
/// channel in tests.
pub trait EndpointSink: Clone + Send + Sync + 'static {
    /// Replaces the endpoints of the fleets of `service` in `sets` (by
    /// fleet name), all in one version; why not, if they were refused
    /// (the watcher offers them again [`REFUSED_RETRY`] later, or at the
    /// next change).
    fn replace(
        &self,
        service: &str,
        sets: Vec<(String, FleetEndpoints)>,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// A fleet's slices could not be used; its last good endpoints stay.
    /// Called once per new problem.
    fn refused(&self, service: &str, fleet: &str, error: &WatchProblem) {
        let _ = (service, fleet, error);
    }
}

/// Why a fleet's endpoints were not updated.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WatchProblem {
    /// A slice, or the whole set, was refused.
    #[error(transparent)]
    Slice(#[from] SliceError),
    /// More slices than `--kube-max-slices`.
    #[error("more than {limit} EndpointSlices (--kube-max-slices); listing again in 30s")]
    TooManySlices {
        /// The `--kube-max-slices` value.
        limit: usize,
    },
}

type SliceStream = Pin<Box<dyn Stream<Item = watcher::Result<Event<EndpointSlice>>> + Send>>;

/// One Kubernetes fleet of the service, as its watcher has seen it.
struct FleetWatch {
    name: String,
    spec: KubernetesFleet,
    /// Slices by name, each reduced (or refused) on arrival.
    slices: HashMap<String, Result<SliceEndpoints, SliceError>>,
    /// The slices of a list under way (`Init` to `InitDone`).
    listing: Option<HashMap<String, Result<SliceEndpoints, SliceError>>>,
    /// Past `max_slices` since the last list: the view is incomplete.
    overflow: bool,
    /// Changed since last handed on.
    dirty: bool,
    /// What was last handed on.
    published: Option<FleetEndpoints>,
    /// The problem last reported, so that it is reported once.
    problem: Option<WatchProblem>,
    /// Why the sink last refused the set, so that it is logged once.
    refusal: Option<String>,
    /// When to offer a refused set again.
    retry_at: Option<Instant>,
    /// A set (or a problem) came out of a first list.
    tried: bool,
}

impl FleetWatch {
    /// What the fleet's endpoints are now, if they can be told.
    fn endpoints(&self, limits: &KubeLimits) -> Result<FleetEndpoints, WatchProblem> {
        if self.overflow {
            return Err(WatchProblem::TooManySlices {
                limit: limits.max_slices,
            });
        }
        let mut ok = Vec::with_capacity(self.slices.len());
        for s in self.slices.values() {
            ok.push(s.as_ref().map_err(|e| WatchProblem::Slice(e.clone()))?);
        }
        Ok(fleet_endpoints(ok, limits.max_endpoints)?)
    }

    /// Applies one watcher event; `true` if the fleet's view overflowed.
    fn apply(&mut self, event: Event<EndpointSlice>, limits: &KubeLimits) -> bool {
        let reduce = |s: &EndpointSlice| {
            (
                key(s),
                slice_endpoints(s, self.spec.port.as_ref(), limits.max_endpoints),
            )
        };
        match event {
            Event::Init => {
                self.listing = Some(HashMap::new());
                false
            }
            Event::InitApply(s) => {
                let (k, v) = reduce(&s);
                let listing = self.listing.get_or_insert_with(HashMap::new);
                insert_bounded(listing, k, v, limits.max_slices)
            }
            Event::InitDone => {
                self.slices = self.listing.take().unwrap_or_default();
                self.overflow = false;
                self.dirty = true;
                false
            }
            Event::Apply(s) => {
                let (k, v) = reduce(&s);
                self.dirty = true;
                insert_bounded(&mut self.slices, k, v, limits.max_slices)
            }
            Event::Delete(s) => {
                self.slices.remove(&key(&s));
                self.dirty = true;
                false
            }
        }
    }
}

/// Inserts unless that makes more than `max` slices; `true` if refused.
fn insert_bounded(
    map: &mut HashMap<String, Result<SliceEndpoints, SliceError>>,
    k: String,
    v: Result<SliceEndpoints, SliceError>,
    max: usize,
) -> bool {
    if map.len() >= max && !map.contains_key(&k) {
        return true;
    }
    map.insert(k, v);
    false
}

/// A slice's name (unique in its namespace; the API server always sets
/// it).
fn key(s: &EndpointSlice) -> String {
    s.metadata.name.clone().unwrap_or_default()
}

/// A new watcher of `spec`'s slices, starting after `delay`.
fn slice_stream(client: &Client, spec: &KubernetesFleet, delay: Duration) -> SliceStream {
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &spec.namespace);
    let config = watcher::Config::default().labels(&spec.label_selector());
    let stream = watch_slices(api, config).default_backoff();
    if delay.is_zero() {
        stream.boxed()
    } else {
        // A stream that ends, empty, after `delay`, then the watcher.
        futures::stream::once(tokio::time::sleep(delay))
            .filter_map(|()| std::future::ready(None))
            .chain(stream)
            .boxed()
    }
}

/// Whether a watcher error is the API server refusing a watch with an
/// HTTP 410 (a `resourceVersion` too old), which needs a new list.
fn is_gone_on_watch_start(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchStartFailed(kube::Error::Api(s)) if s.code == 410)
}

/// Watches `fleets` (name, spec) of `service` until the task is aborted,
/// handing their endpoints to `sink`. `settled` fires once every fleet's
/// first list has been handed on (or refused).
pub async fn run_service<S: EndpointSink>(
    client: Client,
    service: String,
    fleets: Vec<(String, KubernetesFleet)>,
    limits: KubeLimits,
    sink: S,
    settled: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let mut settled = settled;
    let mut watches: Vec<FleetWatch> = fleets
        .into_iter()
        .map(|(name, spec)| FleetWatch {
            name,
            spec,
            slices: HashMap::new(),
            listing: None,
            overflow: false,
            dirty: false,
            published: None,
            problem: None,
            refusal: None,
            retry_at: None,
            tried: false,
        })
        .collect();
    let mut streams = tokio_stream::StreamMap::new();
    for (i, w) in watches.iter().enumerate() {
        streams.insert(i, slice_stream(&client, &w.spec, Duration::ZERO));
    }
    // When this service last handed something on.
    let mut last: Option<Instant> = None;
    loop {
        let due = last.map(|t| t + limits.window);
        let any_dirty = watches.iter().any(|w| w.dirty);
        let retry = watches.iter().filter_map(|w| w.retry_at).min();
        tokio::select! {
            next = streams.next() => {
                let Some((i, result)) = next else { return };
                let w = &mut watches[i];
                match result {
                    Ok(event) => {
                        if w.apply(event, &limits) {
                            w.overflow = true;
                            w.dirty = true;
                            w.slices.clear();
                            w.listing = None;
                            streams.insert(i, slice_stream(&client, &w.spec, OVERFLOW_RELIST));
                        }
                    }
                    Err(e) if is_gone_on_watch_start(&e) => {
                        tracing::info!(service, fleet = w.name, "watch refused with 410 Gone; listing again");
                        streams.insert(i, slice_stream(&client, &w.spec, Duration::ZERO));
                    }
                    Err(e) => {
                        tracing::warn!(service, fleet = w.name, error = %crate::text::untrusted(&e.to_string()), "EndpointSlice watch error; retrying");
                    }
                }
            }
            () = sleep_until_opt(due), if any_dirty => {}
            () = sleep_until_opt(retry), if retry.is_some() => {
                let now = Instant::now();
                for w in &mut watches {
                    if w.retry_at.is_some_and(|t| t <= now) {
                        w.retry_at = None;
                        w.dirty = true;
                    }
                }
            }
        }
        let now = Instant::now();
        if watches.iter().any(|w| w.dirty) && due.is_none_or(|d| now >= d) {
            let handed = hand_on(&service, &mut watches, &limits, &sink).await;
            if handed {
                last = Some(now);
            }
            if watches.iter().all(|w| w.tried)
                && let Some(tx) = settled.take()
            {
                let _ = tx.send(());
            }
        }
    }
}

async fn sleep_until_opt(due: Option<Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Hands the changed endpoints of the dirty fleets of `service` on, in
/// one call so that fleets that changed in one window share one version;
/// `true` if it did.
async fn hand_on<S: EndpointSink>(
    service: &str,
    watches: &mut [FleetWatch],
    limits: &KubeLimits,
    sink: &S,
) -> bool {
    let mut changed = Vec::new();
    for (i, w) in watches.iter_mut().enumerate() {
        if !std::mem::take(&mut w.dirty) {
            continue;
        }
        w.tried = true;
        match w.endpoints(limits) {
            Ok(set) => {
                w.problem = None;
                if w.published.as_ref() != Some(&set) {
                    tracing::debug!(
                        service,
                        fleet = w.name,
                        endpoints = set.len(),
                        "Kubernetes endpoints changed"
                    );
                    changed.push((i, set));
                }
            }
            Err(problem) => {
                if w.problem.as_ref() != Some(&problem) {
                    tracing::warn!(
                        service,
                        fleet = w.name,
                        error = %problem,
                        "EndpointSlices refused; the fleet keeps its last good endpoints"
                    );
                    sink.refused(service, &w.name, &problem);
                    w.problem = Some(problem);
                }
            }
        }
    }
    if changed.is_empty() {
        return false;
    }
    let sets = changed
        .iter()
        .map(|(i, set)| (watches[*i].name.clone(), set.clone()))
        .collect();
    match sink.replace(service, sets).await {
        Ok(()) => {
            for (i, set) in changed {
                let w = &mut watches[i];
                w.published = Some(set);
                w.refusal = None;
                w.retry_at = None;
            }
            true
        }
        Err(why) => {
            for (i, _) in changed {
                let w = &mut watches[i];
                if w.refusal.as_ref() != Some(&why) {
                    tracing::warn!(
                        service,
                        fleet = w.name,
                        error = %why,
                        "Kubernetes endpoints refused; the fleet keeps its last endpoints, \
                         and they are offered again"
                    );
                    w.refusal = Some(why.clone());
                }
                w.retry_at = Some(Instant::now() + REFUSED_RETRY);
            }
            false
        }
    }
}

/// A service's Kubernetes fleets: (fleet name, where its endpoints are).
pub(crate) type ServiceFleets = Vec<(String, KubernetesFleet)>;

/// The Kubernetes fleets of a config, by service.
pub(crate) fn kubernetes_fleets(config: &crate::config::Config) -> BTreeMap<String, ServiceFleets> {
    let mut out = BTreeMap::new();
    for (sname, s) in &config.services {
        let fleets: Vec<_> = s
            .fleets
            .iter()
            .filter_map(|(f, fleet)| fleet.kubernetes().map(|k| (f.clone(), k.clone())))
            .collect();
        if !fleets.is_empty() {
            out.insert(sname.clone(), fleets);
        }
    }
    out
}

/// The running watchers of a config; follows reloads. Dropping it stops
/// them.
pub(crate) struct Watchers<S: EndpointSink> {
    client: Client,
    limits: KubeLimits,
    sink: S,
    running: BTreeMap<String, (ServiceFleets, tokio::task::JoinHandle<()>)>,
}

impl<S: EndpointSink> Watchers<S> {
    /// No watcher yet; [`Watchers::follow`] starts them.
    pub(crate) fn new(client: Client, limits: KubeLimits, sink: S) -> Watchers<S> {
        Watchers {
            client,
            limits,
            sink,
            running: BTreeMap::new(),
        }
    }

    /// The client the watchers use.
    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    /// Starts, restarts and stops watchers so that each service of
    /// `config` with Kubernetes fleets has one, for exactly those fleets.
    /// A service whose fleets did not change keeps its watcher (and its
    /// endpoints). Returns, per watcher started, a signal that its first
    /// lists were handed on.
    pub(crate) fn follow(
        &mut self,
        config: &crate::config::Config,
    ) -> Vec<tokio::sync::oneshot::Receiver<()>> {
        let mut started = Vec::new();
        let wanted = kubernetes_fleets(config);
        self.running.retain(|service, (fleets, task)| {
            let keep = wanted.get(service) == Some(fleets);
            if !keep {
                task.abort();
            }
            keep
        });
        for (service, fleets) in wanted {
            if self.running.contains_key(&service) {
                continue;
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let task = tokio::spawn(run_service(
                self.client.clone(),
                service.clone(),
                fleets.clone(),
                self.limits,
                self.sink.clone(),
                Some(tx),
            ));
            self.running.insert(service, (fleets, task));
            started.push(rx);
        }
        started
    }
}

impl<S: EndpointSink> Drop for Watchers<S> {
    fn drop(&mut self) {
        for (_, task) in self.running.values() {
            task.abort();
        }
    }
}
