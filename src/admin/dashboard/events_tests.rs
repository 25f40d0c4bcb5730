use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;

use super::*;
use crate::ha::replicas::ReplicaRecord;
use crate::rollout::fixtures::service_status;
use crate::rollout::{
    CheckResult, HistoryEntry, Operation, Outcome, Progress, ServiceStatus, StatusView, Verb,
};
use crate::xds::ProxyStatus;
use crate::xds::resources::PerType;

fn proxy(node: &str, acked: &str, nack: bool) -> pb::Proxy {
    let ty = |name: &str| pb::TypeStatus {
        r#type: name.into(),
        sent: Some("2".into()),
        acked: Some(acked.into()),
        nack: nack.then(|| pb::Nack {
            version: "2".into(),
            message: "bad".into(),
            at_unix_ms: 0,
        }),
        ..Default::default()
    };
    pb::Proxy {
        node_id: node.into(),
        group: "edge".into(),
        types: vec![ty("CDS"), ty("EDS"), ty("LDS"), ty("RDS")],
        ..Default::default()
    }
}

fn response(proxies: Vec<pb::Proxy>) -> pb::ProxiesResponse {
    let v = pb::TypeVersions {
        cds: "2".into(),
        eds: "2".into(),
        lds: "2".into(),
        rds: "2".into(),
    };
    pb::ProxiesResponse {
        proxies,
        current_versions: [("edge".to_owned(), v)].into(),
    }
}

fn nodes(r: &pb::ProxiesResponse) -> Vec<&str> {
    r.proxies.iter().map(|p| p.node_id.as_str()).collect()
}

#[test]
fn nacked_proxies_come_first_then_pending_then_synced() {
    let mut r = response(vec![
        proxy("a-synced", "2", false),
        proxy("b-stale", "1", false),
        proxy("c-nacked", "1", true),
        proxy("a-stale", "1", false),
        proxy("z-nacked", "1", true),
    ]);
    assert_eq!(keep_first(&mut r, 10), (5, 5));
    assert_eq!(
        nodes(&r),
        ["c-nacked", "z-nacked", "a-stale", "b-stale", "a-synced"]
    );
    assert_eq!(keep_first(&mut r, 3), (5, 3));
    assert_eq!(nodes(&r), ["c-nacked", "z-nacked", "a-stale"]);
}

#[test]
fn a_frame_is_one_data_line_whatever_the_text() {
    let f = frame(
        "proxies",
        &json!({"message": "line one\nline two\r\n\ndata: x"}),
    );
    let text = std::str::from_utf8(&f).expect("utf-8");
    assert!(text.starts_with("event: proxies\ndata: {"), "{text}");
    assert!(text.ends_with("}\n\n"), "{text}");
    assert_eq!(text.matches('\n').count(), 3, "{text}");
    assert!(!text.contains('\r'));
}

#[test]
fn stamping_adds_the_time_and_leaves_the_payload_alone() {
    let payload = json!({"proxies": []});
    let data = stamped(&payload, &[("total", json!(3))]);
    assert_eq!(data["total"], 3);
    assert!(data["at_unix_ms"].as_i64().is_some_and(|t| t > 0));
    assert_eq!(payload, json!({"proxies": []}));
}

/// A backend with one service whose last change the test sets, counting
/// the calls the publisher makes.
#[derive(Default)]
struct Counting {
    last_change: Mutex<Option<u64>>,
    statuses: AtomicUsize,
    histories: AtomicUsize,
    replicas: AtomicUsize,
    proxies: AtomicUsize,
}

fn change(id: u64) -> HistoryEntry {
    HistoryEntry {
        id,
        verb: Verb::Flip,
        actor: "admin".into(),
        started: SystemTime::UNIX_EPOCH,
        finished: SystemTime::UNIX_EPOCH,
        from: Default::default(),
        to: Default::default(),
        target: None,
        version: None,
        outcome: Outcome::Succeeded,
        convergence: None,
        acks: Vec::new(),
        warnings: Vec::new(),
        not_waited_for: Vec::new(),
    }
}

#[tonic::async_trait]
impl Backend for Counting {
    async fn status(&self, _: Option<&str>) -> Result<StatusView, RolloutError> {
        self.statuses.fetch_add(1, Ordering::Relaxed);
        let last = *self.last_change.lock().expect("not poisoned");
        Ok(StatusView {
            version: None,
            services: vec![ServiceStatus {
                last_change: last.map(change),
                ..service_status("web", &[("blue", 100)])
            }],
        })
    }
    fn proxies(&self) -> Vec<ProxyStatus> {
        self.proxies.fetch_add(1, Ordering::Relaxed);
        Vec::new()
    }
    fn current_versions(&self) -> BTreeMap<String, PerType<String>> {
        BTreeMap::new()
    }
    async fn start(
        &self,
        _: Operation,
        _: &str,
    ) -> Result<watch::Receiver<Progress>, RolloutError> {
        Err(RolloutError::Invalid("read-only".into()))
    }
    async fn follow(&self, _: u64) -> Result<watch::Receiver<Progress>, RolloutError> {
        Err(RolloutError::Invalid("read-only".into()))
    }
    async fn abort(&self, _: u64, _: &str) -> Result<(), RolloutError> {
        Err(RolloutError::Invalid("read-only".into()))
    }
    async fn verify(&self, _: &str, _: &str) -> Result<Vec<CheckResult>, RolloutError> {
        Ok(Vec::new())
    }
    async fn replicas(&self) -> Vec<ReplicaRecord> {
        self.replicas.fetch_add(1, Ordering::Relaxed);
        Vec::new()
    }
    async fn history(&self, _: &str) -> Result<Vec<HistoryEntry>, RolloutError> {
        self.histories.fetch_add(1, Ordering::Relaxed);
        let last = *self.last_change.lock().expect("not poisoned");
        Ok(last.map(change).into_iter().collect())
    }
}

#[tokio::test(start_paused = true)]
async fn the_publisher_sends_only_changes_and_asks_for_history_only_when_it_moved() {
    let backend = Arc::new(Counting::default());
    let registry = ProxyRegistry::new();
    let events = Events::new(EventParts {
        backend: backend.clone(),
        registry: registry.clone(),
        metrics: Arc::new(Metrics::new()),
        tokens: Tokens::none(),
        limits: EventLimits::default(),
        shutdown: Shutdown::never(),
        kick: Kick::default(),
    });
    let mut status = events.status.subscribe();
    let mut proxies = events.proxies.subscribe();
    let mut publisher = Publisher::default();
    let count = |n: &AtomicUsize| n.load(Ordering::Relaxed);

    publisher.tick(&events).await;
    assert!(status.has_changed().expect("open") && proxies.has_changed().expect("open"));
    let first = status.borrow_and_update().clone();
    proxies.borrow_and_update();
    assert!(first.starts_with(b"event: status\ndata: {"));
    assert_eq!(count(&backend.histories), 1);

    // Nothing changed: nothing is published, the status is not asked for
    // again within a second, nor history, nor the replicas.
    for _ in 0..3 {
        publisher.tick(&events).await;
    }
    assert!(!status.has_changed().expect("open"));
    assert!(!proxies.has_changed().expect("open"));
    assert_eq!(count(&backend.statuses), 1);
    assert_eq!(count(&backend.histories), 1);
    assert_eq!(count(&backend.replicas), 1);
    // A change asked through the admin API: the next tick asks at once.
    events.kick.kick();
    publisher.tick(&events).await;
    assert_eq!(count(&backend.statuses), 2);
    publisher.tick(&events).await;
    assert_eq!(count(&backend.statuses), 2);
    // Nor are the proxies listed again while no stream changed...
    assert_eq!(count(&backend.proxies), 1);
    // ...but they are at the next tick after one did,
    registry.notify();
    publisher.tick(&events).await;
    assert_eq!(count(&backend.proxies), 2);
    // and, for their load reports' ages, once the refresh is due.
    publisher.tick(&events).await;
    assert_eq!(count(&backend.proxies), 2);
    tokio::time::advance(PROXIES_REFRESH).await;
    publisher.tick(&events).await;
    assert_eq!(count(&backend.proxies), 3);
    // The registry moved (and, above, a refresh was due): the status was
    // asked for again each time.
    assert_eq!(count(&backend.statuses), 4);

    // The service's last change moved: its history is asked once more.
    *backend.last_change.lock().expect("not poisoned") = Some(7);
    events.kick.kick();
    publisher.tick(&events).await;
    publisher.tick(&events).await;
    assert_eq!(count(&backend.histories), 2);
    let data: Value = {
        let frame = status.borrow_and_update().clone();
        let text = std::str::from_utf8(&frame).expect("utf-8");
        let line = text.lines().nth(1).expect("a data line");
        serde_json::from_str(line.trim_start_matches("data: ")).expect("JSON")
    };
    assert_eq!(data["history"]["web"][0]["id"], 7);
    assert_eq!(data["history"]["web"][0].get("acks"), None);
    assert!(data["services"][0]["last_change"]["acks"].is_array());
    assert_eq!(data["services"][0]["last_change"]["id"], 7);
    assert_eq!(data["services"][0]["both_fleets_for_ms"], Value::Null);
}

#[test]
fn the_proxies_payload_keeps_a_proxys_report_age_but_not_its_counters_per_cluster() {
    let mut payload = json!({"proxies": [
        {"node_id": "edge-1", "load": {"age_ms": 120, "reports": 9,
            "clusters": [{"cluster": "web-blue", "requests": 4, "errors": 1, "in_progress": 0}]}},
        {"node_id": "edge-2", "load": null},
    ]});
    without_load_clusters(&mut payload);
    assert_eq!(
        payload,
        json!({"proxies": [
            {"node_id": "edge-1", "load": {"age_ms": 120, "reports": 9}},
            {"node_id": "edge-2", "load": null},
        ]})
    );
}
