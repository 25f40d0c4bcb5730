//! `GET /v1/events`: the dashboard's live state as Server-Sent Events.
//!
//! One publisher task, started with the first stream, builds the `status`
//! and `proxies` payloads at most every [`INTERVAL`], only while a stream
//! is open, and only when something may have moved: `status` while an
//! operation runs, after a change asked through the admin API ([`Kick`]) or
//! after the proxies' xDS state moved, else every [`STATUS_REFRESH`];
//! `proxies` after their xDS state moved, else every [`PROXIES_REFRESH`]. Each is encoded once into shared [`Bytes`] and put on a
//! `watch` channel only when it differs from the last one. Every stream
//! holds a receiver of each channel, so a slow reader skips states it had
//! no time for and never holds more than the latest of each; the publisher
//! never waits for anyone.
//!
//! A stream is a small producer task that hands frames to the response
//! body through a channel of one. A frame that cannot be handed over
//! within the stall timeout (`--event-stall-timeout`) means the reader has
//! stopped reading: the stream is closed and its slot freed. At most
//! `--max-event-streams` streams are open at once; one more is answered
//! `503`.
//!
//! The backend calls behind a payload go through the controller's driver,
//! the task that also runs the flips, so the publisher keeps them few: one
//! status of every service per tick, the history of a service only when
//! its last change moved, and the replicas (read from etcd) at most once a
//! second.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::StatusCode;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Map, Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::admin::auth::Tokens;
use crate::admin::backend::Backend;
use crate::admin::convert::{self, unix_ms};
use crate::admin::json::{self, SyncState};
use crate::admin::pb;
use crate::admin::views;
use crate::metrics::Metrics;
use crate::rollout::RolloutError;
use crate::shutdown::Shutdown;
use crate::xds::ProxyRegistry;

/// How often, at most, the publisher builds its payloads.
pub(crate) const INTERVAL: Duration = Duration::from_millis(250);
/// How often a stream sends a comment line, so proxies and load balancers
/// between it and the browser do not take it for dead.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How often the `proxies` payload is built again when no proxy's xDS
/// state moved: only their load reports' ages and counts change then, and
/// the page counts ages on from the event's time. Building it costs about
/// a microsecond per proxy, so doing so every tick would keep a core busy
/// at tens of thousands of proxies with nothing happening.
const PROXIES_REFRESH: Duration = Duration::from_secs(5);
/// How often the `status` payload is built again when nothing says it
/// moved: no operation running, no proxy's xDS state changed, no change
/// asked through the admin API. What is left to catch then (the measured
/// traffic, which moves with each report; a config reload; an operation
/// a Kubernetes route started, until its first push) is fine a second
/// late, and a status walks every proxy of every service.
const STATUS_REFRESH: Duration = Duration::from_secs(1);
/// How often, at most, the replicas are read (from etcd).
const REPLICAS_EVERY: Duration = Duration::from_secs(1);
/// Changes per service in a `status` event's `history`.
const HISTORY: usize = 10;
/// How long a stream being closed by shutdown tries to say so.
const FAREWELL: Duration = Duration::from_secs(1);

/// How much the event streams may make teal hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventLimits {
    /// Streams open at once (`--max-event-streams`).
    pub max_streams: usize,
    /// How long a frame may wait for a reader that takes none before the
    /// stream is closed (`--event-stall-timeout`).
    pub stall_timeout: Duration,
    /// Proxies listed in a `proxies` event (`--max-event-proxies`).
    pub max_proxies: usize,
}

impl EventLimits {
    /// A dashboard per operator and a few scripts; each stream costs a
    /// task, a connection and at most two shared payloads.
    pub const DEFAULT_MAX_STREAMS: usize = 32;
    /// Long enough for a laptop waking from sleep or a phone switching
    /// networks, short enough that a dead tab frees its slot soon.
    pub const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(30);
    /// A `proxies` event is about 600 bytes per proxy: 2,000 make about
    /// 1.2 MB, as much as a browser redraws four times a second.
    pub const DEFAULT_MAX_PROXIES: usize = 2000;
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits {
            max_streams: Self::DEFAULT_MAX_STREAMS,
            stall_timeout: Self::DEFAULT_STALL_TIMEOUT,
            max_proxies: Self::DEFAULT_MAX_PROXIES,
        }
    }
}

/// What the publisher and the streams share.
pub(crate) struct Events {
    /// Where the status and the proxies come from.
    backend: Arc<dyn Backend>,
    /// The cordons and load reports added to them, as the gRPC reads add
    /// them.
    registry: Arc<ProxyRegistry>,
    /// Counts streams open and refused.
    metrics: Arc<Metrics>,
    /// Only to tell the page, in `hello`, whether acting is possible at
    /// all.
    tokens: Tokens,
    limits: EventLimits,
    /// One permit per open stream.
    slots: Arc<Semaphore>,
    /// Streams open: the publisher works while there is one.
    open: watch::Sender<usize>,
    /// The latest `status` frame; empty until the publisher made one
    /// since it last woke.
    status: watch::Sender<Bytes>,
    /// The latest `proxies` frame, likewise.
    proxies: watch::Sender<Bytes>,
    /// Whether the publisher task runs (it is started by the first stream,
    /// inside the server's runtime).
    started: AtomicBool,
    /// Ends the publisher and, with a last `error` event, every stream, so
    /// the server's graceful shutdown is not held up by them.
    shutdown: Shutdown,
    /// Set when a change was asked for through the admin API.
    kick: Kick,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// Tells the publisher that a change was asked for (an operation started,
/// an abort, a cordon), so that its next tick builds the `status` payload
/// again without waiting for [`STATUS_REFRESH`]. The admin API's gRPC
/// service and the dashboard's actions both hold one.
#[derive(Clone, Debug, Default)]
pub(crate) struct Kick(Arc<AtomicBool>);

impl Kick {
    /// A change was asked for.
    pub(crate) fn kick(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Whether one was since the last call.
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }
}

/// Everything an [`Events`] is made of.
pub(crate) struct EventParts {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) registry: Arc<ProxyRegistry>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) tokens: Tokens,
    pub(crate) limits: EventLimits,
    pub(crate) shutdown: Shutdown,
    pub(crate) kick: Kick,
}

impl Events {
    pub(crate) fn new(parts: EventParts) -> Arc<Events> {
        Arc::new(Events {
            backend: parts.backend,
            registry: parts.registry,
            metrics: parts.metrics,
            tokens: parts.tokens,
            slots: Arc::new(Semaphore::new(parts.limits.max_streams.max(1))),
            limits: parts.limits,
            open: watch::Sender::new(0),
            status: watch::Sender::new(Bytes::new()),
            proxies: watch::Sender::new(Bytes::new()),
            started: AtomicBool::new(false),
            shutdown: parts.shutdown,
            kick: parts.kick,
        })
    }

    /// Opens a stream, or answers `503` when as many as allowed are open.
    pub(crate) fn open(self: &Arc<Self>) -> Response {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.metrics.event_stream_refused();
            let body = json!({"error": format!(
                "{} event streams are open, as many as --max-event-streams allows; \
                 close a dashboard or try again later",
                self.limits.max_streams
            )});
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                [(CONTENT_TYPE, "application/json")],
                format!("{body}\n"),
            )
                .into_response();
        };
        if !self.started.swap(true, Ordering::AcqRel) {
            tokio::spawn(publish(self.clone()));
        }
        let (tx, rx) = mpsc::channel::<Bytes>(1);
        let open = Open::new(self.clone(), permit);
        tokio::spawn(stream(open, tx));
        let body = Body::from_stream(ReceiverStream::new(rx).map(Ok::<Bytes, Infallible>));
        (
            [
                (CONTENT_TYPE, "text/event-stream; charset=utf-8"),
                (CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response()
    }

    /// The `hello` event's data.
    fn hello(&self) -> Value {
        let (leader, leader_admin) = match self.backend.leading() {
            Ok(()) => (true, None),
            Err(RolloutError::NotLeader { leader }) => (false, leader),
            Err(_) => (false, None),
        };
        json!({
            "replica": self.backend.replica_id(),
            "leader": leader,
            "leader_admin": leader_admin,
            "interval_ms": convert::millis(INTERVAL),
            "max_proxies": self.limits.max_proxies,
            "tokens": !self.tokens.is_empty(),
        })
    }
}

/// An open stream's hold on its slot; letting go frees it.
struct Open {
    events: Arc<Events>,
    _permit: OwnedSemaphorePermit,
}

impl Open {
    fn new(events: Arc<Events>, permit: OwnedSemaphorePermit) -> Open {
        events.open.send_modify(|n| *n += 1);
        events.metrics.event_stream(true);
        Open {
            events,
            _permit: permit,
        }
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.events.open.send_modify(|n| *n = n.saturating_sub(1));
        self.events.metrics.event_stream(false);
    }
}

/// One SSE frame: `event: <name>` and its data on one line.
pub(crate) fn frame(event: &str, data: &Value) -> Bytes {
    // serde_json escapes newlines inside strings, so the data is one line
    // whatever a proxy or an operator put in it.
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// Feeds one stream until its reader goes away, stops reading, or the
/// server stops.
async fn stream(open: Open, tx: mpsc::Sender<Bytes>) {
    let events = open.events.clone();
    let stall = events.limits.stall_timeout;
    let mut status = events.status.subscribe();
    let mut proxies = events.proxies.subscribe();
    // What is there now is news to this reader.
    status.mark_changed();
    proxies.mark_changed();
    let mut shutdown = events.shutdown.clone();
    let mut keepalive = tokio::time::interval_at(Instant::now() + KEEPALIVE, KEEPALIVE);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // Browsers reconnect after `retry` milliseconds.
    let mut next = Some(Bytes::from(format!(
        "retry: 2000\n\nevent: hello\ndata: {}\n\n",
        events.hello()
    )));
    loop {
        if let Some(frame) = next.take() {
            match tokio::time::timeout(stall, tx.send(frame)).await {
                Ok(Ok(())) => {}
                // The body was dropped: the reader went away.
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::info!(
                        stall_ms = convert::millis(stall),
                        "closing an event stream: its reader took no frame within \
                         --event-stall-timeout"
                    );
                    return;
                }
            }
        }
        tokio::select! {
            biased;
            () = shutdown.wait() => {
                let bye = frame("error", &json!({"error": "teal is stopping"}));
                let _ = tokio::time::timeout(FAREWELL, tx.send(bye)).await;
                return;
            }
            () = tx.closed() => return,
            changed = status.changed() => {
                if changed.is_err() {
                    return;
                }
                next = Some(status.borrow_and_update().clone()).filter(|b| !b.is_empty());
            }
            changed = proxies.changed() => {
                if changed.is_err() {
                    return;
                }
                next = Some(proxies.borrow_and_update().clone()).filter(|b| !b.is_empty());
            }
            _ = keepalive.tick() => next = Some(Bytes::from_static(b": keepalive\n\n")),
        }
    }
}

/// The publisher: while a stream is open, builds both payloads every
/// [`INTERVAL`] and publishes those that changed.
async fn publish(events: Arc<Events>) {
    let mut open = events.open.subscribe();
    let mut shutdown = events.shutdown.clone();
    let mut state = Publisher::default();
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            waited = open.wait_for(|n| *n > 0) => if waited.is_err() { return },
        }
        let started = Instant::now();
        state.tick(&events).await;
        tokio::select! {
            () = shutdown.wait() => return,
            () = tokio::time::sleep_until(started + INTERVAL) => {}
        }
        if *open.borrow() == 0 {
            // Asleep until the next stream: what it would find then is
            // old, so it waits for a fresh state instead.
            state = Publisher::default();
            events.status.send_replace(Bytes::new());
            events.proxies.send_replace(Bytes::new());
        }
    }
}

/// What the publisher remembers between ticks.
#[derive(Default)]
struct Publisher {
    /// The last `status` published, without its time.
    status: Option<Value>,
    /// The registry's generation when the `status` payload was last
    /// built, and when.
    status_built: Option<(u64, Instant)>,
    /// The last `proxies` published, without its time.
    proxies: Option<Value>,
    /// The registry's generation when the `proxies` payload was last
    /// built, and when: it is built again only once either moved on.
    proxies_built: Option<(u64, Instant)>,
    /// Per service, the id of its last change and its recent history.
    history: HashMap<String, (Option<u64>, Value)>,
    /// The replicas and when they were read.
    replicas: Option<(Instant, Vec<pb::Replica>)>,
}

impl Publisher {
    async fn tick(&mut self, events: &Events) {
        let generation = events.registry.generation();
        let kicked = events.kick.take();
        let running = self.status.as_ref().is_some_and(|s| {
            s["services"]
                .as_array()
                .is_some_and(|all| all.iter().any(|svc| !svc["in_progress"].is_null()))
        });
        let quiet = self
            .status_built
            .is_some_and(|(g, at)| g == generation && at.elapsed() < STATUS_REFRESH);
        if kicked || running || !quiet {
            self.status_built = Some((generation, Instant::now()));
            self.tick_status(events).await;
        }
        self.tick_proxies(events, generation);
    }

    async fn tick_status(&mut self, events: &Events) {
        match self.status(events).await {
            Ok(status) => {
                if self.status.as_ref() != Some(&status) {
                    let data = stamped(&status, &[]);
                    self.status = Some(status);
                    events.status.send_replace(frame("status", &data));
                }
            }
            Err(e) => tracing::debug!(error = %e, "events: no status this tick"),
        }
    }

    /// `generation` was read before anything was built, so a change made
    /// meanwhile is seen at the next tick.
    fn tick_proxies(&mut self, events: &Events, generation: u64) {
        if self
            .proxies_built
            .is_some_and(|(g, at)| g == generation && at.elapsed() < PROXIES_REFRESH)
        {
            return;
        }
        self.proxies_built = Some((generation, Instant::now()));
        let mut r = views::proxies(&*events.backend, &events.registry);
        let (total, shown) = keep_first(&mut r, events.limits.max_proxies);
        let mut proxies = json::proxies(&r);
        without_load_clusters(&mut proxies);
        if self.proxies.as_ref() != Some(&proxies) {
            let data = stamped(
                &proxies,
                &[("total", json!(total)), ("shown", json!(shown))],
            );
            self.proxies = Some(proxies);
            events.proxies.send_replace(frame("proxies", &data));
        }
    }

    /// The `status` payload, without its time: `teal status -o json` of
    /// every service, with no clock, and each service's recent changes.
    async fn status(&mut self, events: &Events) -> Result<Value, RolloutError> {
        let view = events.backend.status(None).await?;
        let mut response = convert::status_view(&view);
        response.cordons = views::cordons(&events.registry);
        response.replicas = self.replicas(&*events.backend).await;
        let mut history = Map::new();
        for svc in &response.services {
            let last = svc.last_change.as_ref().map(|c| c.id);
            let cached = self.history.get(&svc.name).filter(|(id, _)| *id == last);
            let changes = match cached {
                Some((_, changes)) => changes.clone(),
                None => {
                    let changes = match events.backend.history(&svc.name).await {
                        Ok(entries) => Value::Array(
                            entries
                                .iter()
                                .take(HISTORY)
                                .map(|h| without_acks(json::change(&convert::history_entry(h))))
                                .collect(),
                        ),
                        Err(e) => {
                            tracing::debug!(error = %e, "events: no history this tick");
                            continue;
                        }
                    };
                    self.history
                        .insert(svc.name.clone(), (last, changes.clone()));
                    changes
                }
            };
            history.insert(svc.name.clone(), changes);
        }
        // Services gone from the config leave the cache too.
        self.history.retain(|name, _| history.contains_key(name));
        let mut status = json::status(&response, None);
        if let Value::Object(fields) = &mut status {
            fields.insert("history".into(), Value::Object(history));
        }
        Ok(status)
    }

    async fn replicas(&mut self, backend: &dyn Backend) -> Vec<pb::Replica> {
        match &self.replicas {
            Some((at, replicas)) if at.elapsed() < REPLICAS_EVERY => replicas.clone(),
            _ => {
                let replicas = views::replicas(backend.replicas().await);
                self.replicas = Some((Instant::now(), replicas.clone()));
                replicas
            }
        }
    }
}

/// A change without its `acks` (when each proxy ACKed: one entry per
/// proxy, so ten changes at 1,000 proxies would be 10,000 entries in every
/// `status` event); `last_change` keeps them, and `teal history -o json`
/// has them all.
fn without_acks(mut change: Value) -> Value {
    if let Some(fields) = change.as_object_mut() {
        fields.remove("acks");
    }
    change
}

/// Takes each proxy's per-cluster load counters out of a `proxies`
/// payload. A proxy reports every fleet cluster of its group, so with 10
/// services they were three quarters of the payload (2.2 MB at 1,000
/// proxies), and they change with every report; the dashboard shows each
/// fleet's measured traffic from the `status` event instead, and `teal
/// proxies -o json` still has them per proxy.
fn without_load_clusters(payload: &mut Value) {
    let Some(proxies) = payload.get_mut("proxies").and_then(Value::as_array_mut) else {
        return;
    };
    for p in proxies {
        if let Some(load) = p.get_mut("load").and_then(Value::as_object_mut) {
            load.remove("clusters");
        }
    }
}

/// `payload` with `at_unix_ms` (now) and `extra` added.
fn stamped(payload: &Value, extra: &[(&str, Value)]) -> Value {
    let mut data = payload.clone();
    if let Value::Object(fields) = &mut data {
        fields.insert("at_unix_ms".into(), json!(unix_ms(SystemTime::now())));
        for (k, v) in extra {
            fields.insert((*k).into(), v.clone());
        }
    }
    data
}

/// Keeps the first `max` proxies of `r` in the dashboard's order: NACKED
/// first, then pending (STALE or NOT SENT), then the rest, each part by
/// node id. Returns how many there were and how many are kept.
pub(crate) fn keep_first(r: &mut pb::ProxiesResponse, max: usize) -> (usize, usize) {
    let total = r.proxies.len();
    let rank = |s: SyncState| match s {
        SyncState::Nacked => 0,
        SyncState::Stale | SyncState::NotSent => 1,
        SyncState::Synced => 2,
    };
    let mut keyed: Vec<(u8, pb::Proxy)> = std::mem::take(&mut r.proxies)
        .into_iter()
        .map(|p| (rank(SyncState::of_proxy(r, &p)), p))
        .collect();
    keyed.sort_by(|(a, p), (b, q)| a.cmp(b).then_with(|| p.node_id.cmp(&q.node_id)));
    keyed.truncate(max);
    r.proxies = keyed.into_iter().map(|(_, p)| p).collect();
    (total, r.proxies.len())
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
