//! teal's EndpointSlice watcher against an API server that speaks the
//! real list/watch protocol (`support/kube_api.rs`), reached through a
//! kubeconfig file: no client call is mocked.
//!
//! What the watcher hands on is caught by a channel sink.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::kube_api::{FakeKube, slice};
use teal::config::{DEFAULT_SLICE_MANAGER, KubernetesFleet, KubernetesPort};
use teal::kubernetes::KubeLimits;
use teal::kubernetes::watch::{EndpointSink, WatchProblem, run_service};
use tokio::sync::mpsc;

/// What the watcher handed on: fleet, sorted addresses, when.
type Handed = (String, Vec<String>, Instant);

#[derive(Clone)]
struct Sink {
    tx: mpsc::UnboundedSender<Handed>,
    problems: mpsc::UnboundedSender<String>,
    /// Sets to refuse before accepting any.
    refuse: Arc<AtomicUsize>,
    /// The fleets of each accepted call, in order.
    calls: Arc<std::sync::Mutex<Vec<Vec<String>>>>,
}

impl EndpointSink for Sink {
    async fn replace(
        &self,
        _service: &str,
        sets: Vec<(String, teal::kubernetes::slices::FleetEndpoints)>,
    ) -> Result<(), String> {
        if self
            .refuse
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err("unknown fleet (a deferred reload)".into());
        }
        let fleets = sets.iter().map(|(f, _)| f.clone()).collect();
        self.calls.lock().unwrap().push(fleets);
        for (fleet, endpoints) in sets {
            let addrs = endpoints.iter().map(|e| e.address.to_string()).collect();
            self.tx
                .send((fleet, addrs, Instant::now()))
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    fn refused(&self, _service: &str, fleet: &str, error: &WatchProblem) {
        let _ = self.problems.send(format!("{fleet}: {error}"));
    }
}

struct Harness {
    api: FakeKube,
    rx: mpsc::UnboundedReceiver<Handed>,
    problems: mpsc::UnboundedReceiver<String>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn green() -> KubernetesFleet {
    KubernetesFleet {
        namespace: "shop".into(),
        service: "web-green".into(),
        port: Some(KubernetesPort::Name("http".into())),
        managed_by: Some(DEFAULT_SLICE_MANAGER.into()),
    }
}

/// The fake server with `before` applied, and a watcher of fleet `green`
/// (Service `shop/web-green`) reaching it through a kubeconfig file.
async fn start(before: &[serde_json::Value], limits: KubeLimits) -> Harness {
    start_refusing(before, limits, 0).await
}

/// [`start`], with a sink that refuses its first `refuse` sets.
async fn start_refusing(
    before: &[serde_json::Value],
    limits: KubeLimits,
    refuse: usize,
) -> Harness {
    start_fleet(before, limits, refuse, green()).await
}

/// [`start_refusing`], watching `fleet` as the fleet `green`.
async fn start_fleet(
    before: &[serde_json::Value],
    limits: KubeLimits,
    refuse: usize,
    fleet: KubernetesFleet,
) -> Harness {
    let api = FakeKube::start().await;
    for s in before {
        api.apply(s.clone());
    }
    let dir = tempfile::tempdir().unwrap();
    let client = teal::kubernetes::client_from_kubeconfig(&api.kubeconfig(dir.path()))
        .await
        .expect("a client from the kubeconfig");
    let (tx, rx) = mpsc::unbounded_channel();
    let (ptx, problems) = mpsc::unbounded_channel();
    let task = tokio::spawn(run_service(
        client,
        "web".into(),
        vec![("green".into(), fleet)],
        limits,
        Sink {
            tx,
            problems: ptx,
            refuse: Arc::new(AtomicUsize::new(refuse)),
            calls: Arc::default(),
        },
        None,
    ));
    Harness {
        api,
        rx,
        problems,
        task,
        _dir: dir,
    }
}

impl Harness {
    /// The next set handed on, within 10 s.
    async fn next(&mut self) -> Handed {
        tokio::time::timeout(Duration::from_secs(10), self.rx.recv())
            .await
            .expect("a set handed on within 10s")
            .expect("the watcher runs")
    }

    /// Sets handed on until one equals `want`.
    async fn until(&mut self, want: &[&str]) -> Vec<Handed> {
        let mut seen = Vec::new();
        loop {
            let h = self.next().await;
            let done = h.1 == want;
            seen.push(h);
            if done {
                return seen;
            }
        }
    }
}

fn pods(n: usize, ready: usize) -> Vec<(String, bool)> {
    (0..n)
        .map(|i| (format!("10.1.{}.{}", i / 200, i % 200 + 1), i < ready))
        .collect()
}

fn green_slice(name: &str, pods: &[(String, bool)]) -> serde_json::Value {
    let p: Vec<(&str, bool)> = pods.iter().map(|(ip, r)| (ip.as_str(), *r)).collect();
    slice("shop", "web-green", name, 8080, &p)
}

#[tokio::test]
async fn list_then_watch_follows_readiness_one_event_at_a_time() {
    // Another Service's slice, and one in another namespace: not ours.
    let other = slice(
        "shop",
        "web-blue",
        "web-blue-1",
        8080,
        &[("10.9.0.1", true)],
    );
    let mut elsewhere = slice(
        "dev",
        "web-green",
        "web-green-x",
        8080,
        &[("10.9.0.2", true)],
    );
    elsewhere["metadata"]["namespace"] = "dev".into();
    let mut h = start(
        &[green_slice("web-green-a", &pods(3, 1)), other, elsewhere],
        KubeLimits::default(),
    )
    .await;
    let (fleet, first, _) = h.next().await;
    assert_eq!(fleet, "green");
    assert_eq!(
        first,
        ["10.1.0.1:8080"],
        "only the ready pod of the listed slice"
    );
    assert_eq!(h.api.lists(), 1);

    // A second pod becomes ready: one MODIFIED event, one set.
    h.api.apply(green_slice("web-green-a", &pods(3, 2)));
    let (_, second, _) = h.next().await;
    assert_eq!(second, ["10.1.0.1:8080", "10.1.0.2:8080"]);

    // A pod goes unready: it leaves with the next event.
    let mut unready = pods(3, 2);
    unready[0].1 = false;
    h.api.apply(green_slice("web-green-a", &unready));
    let (_, third, _) = h.next().await;
    assert_eq!(third, ["10.1.0.2:8080"]);

    // A new slice (ADDED) and the first one deleted (DELETED).
    h.api
        .apply(green_slice("web-green-b", &[("10.2.0.1".to_owned(), true)]));
    h.until(&["10.1.0.2:8080", "10.2.0.1:8080"]).await;
    h.api.delete("shop", "web-green-a");
    h.until(&["10.2.0.1:8080"]).await;
    // Still the one list: all of this came over the watch.
    assert_eq!(h.api.lists(), 1, "watched, not relisted");
    assert!(
        h.api.watches().iter().all(|rv| rv != "0"),
        "watches resume from the list's version"
    );
}

#[tokio::test]
async fn a_rolling_deploy_of_100_pods_is_coalesced() {
    let mut h = start(
        &[green_slice("web-green-a", &pods(100, 0))],
        KubeLimits::default(),
    )
    .await;
    let (_, first, _) = h.next().await;
    assert!(first.is_empty());
    // 100 pods become ready one by one, as fast as the server can say it.
    let t0 = Instant::now();
    for ready in 1..=100 {
        h.api.apply(green_slice("web-green-a", &pods(100, ready)));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let want: Vec<String> = pods(100, 100)
        .into_iter()
        .map(|(ip, _)| format!("{ip}:8080"))
        .collect();
    // In address order, as teal sorts them.
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    let sets = h.until(&want).await;
    // At most one set per window (100 ms) of the time it took, and each
    // at least one window after the one before.
    let took = sets.last().unwrap().2 - t0;
    let most = took.as_millis() / 100 + 2;
    assert!(
        sets.len() as u128 <= most && sets.len() < 50,
        "{} sets handed on for 100 changes in {took:?}",
        sets.len()
    );
    for pair in sets.windows(2) {
        let gap = pair[1].2 - pair[0].2;
        assert!(gap >= Duration::from_millis(95), "two sets {gap:?} apart");
    }
    eprintln!("100 readiness changes in {took:?} → {} sets", sets.len());
}

#[tokio::test]
async fn fleets_that_change_in_one_window_are_handed_on_in_one_call() {
    let api = FakeKube::start().await;
    let blue_slice = |ready| {
        let p: Vec<(String, bool)> = pods(2, ready)
            .into_iter()
            .map(|(ip, r)| (ip.replace("10.1.", "10.2."), r))
            .collect();
        let p: Vec<(&str, bool)> = p.iter().map(|(ip, r)| (ip.as_str(), *r)).collect();
        slice("shop", "web-blue", "web-blue-a", 8080, &p)
    };
    api.apply(blue_slice(2));
    api.apply(green_slice("web-green-a", &pods(2, 0)));
    let dir = tempfile::tempdir().unwrap();
    let client = teal::kubernetes::client_from_kubeconfig(&api.kubeconfig(dir.path()))
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (ptx, _problems) = mpsc::unbounded_channel();
    let calls: Arc<std::sync::Mutex<Vec<Vec<String>>>> = Arc::default();
    let blue = KubernetesFleet {
        service: "web-blue".into(),
        ..green()
    };
    // A long window, so that the two changes below surely fall in one.
    let limits = KubeLimits {
        window: Duration::from_secs(2),
        ..KubeLimits::default()
    };
    let task = tokio::spawn(run_service(
        client,
        "web".into(),
        vec![("blue".into(), blue), ("green".into(), green())],
        limits,
        Sink {
            tx,
            problems: ptx,
            refuse: Arc::new(AtomicUsize::new(0)),
            calls: calls.clone(),
        },
        None,
    ));
    let next = async |rx: &mut mpsc::UnboundedReceiver<Handed>| {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a set within 10s")
            .expect("the watcher runs")
    };
    // The first lists of both fleets.
    let mut first: Vec<String> = vec![next(&mut rx).await.0, next(&mut rx).await.0];
    first.sort();
    assert_eq!(first, ["blue", "green"]);
    let before = calls.lock().unwrap().len();

    // Blue's pods go unready while green's become ready: one window.
    api.apply(blue_slice(0));
    api.apply(green_slice("web-green-a", &pods(2, 2)));
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let (fleet, addrs, _) = next(&mut rx).await;
        if (fleet == "blue" && addrs.is_empty()) || (fleet == "green" && addrs.len() == 2) {
            seen.push(fleet);
        }
    }
    let after: Vec<Vec<String>> = calls.lock().unwrap()[before..].to_vec();
    assert!(
        after.iter().any(|c| c.len() == 2),
        "blue and green changed in one window but were handed on apart: {after:?}"
    );
    task.abort();
}

#[tokio::test]
async fn a_410_event_makes_the_watcher_list_again_and_nothing_is_lost() {
    let mut h = start(
        &[green_slice("web-green-a", &pods(2, 2))],
        KubeLimits::default(),
    )
    .await;
    assert_eq!(h.next().await.1, ["10.1.0.1:8080", "10.1.0.2:8080"]);
    // The history is compacted: the open watch ends with ERROR 410.
    // Changes made meanwhile are only in the store, so only a new list
    // can see them.
    h.api.compact();
    h.api.apply(green_slice("web-green-a", &pods(2, 1)));
    h.api.compact();
    h.until(&["10.1.0.1:8080"]).await;
    assert!(
        h.api.lists() >= 2,
        "listed again after the 410 ({} lists)",
        h.api.lists()
    );
}

#[tokio::test]
async fn an_http_410_on_the_watch_request_makes_a_new_list() {
    let mut h = start(
        &[green_slice("web-green-a", &pods(2, 2))],
        KubeLimits::default(),
    )
    .await;
    h.next().await;
    // The history is compacted while no watch is open (the open one ends
    // cleanly first), and the server answers a watch from before with an
    // HTTP 410: only a new list gets past it.
    h.api.gone_as_http();
    h.api.end_watches();
    h.api.compact();
    h.api.apply(green_slice("web-green-a", &pods(2, 0)));
    h.until(&[]).await;
    let lists = h.api.lists();
    assert!(lists >= 2, "{lists} lists");
    // And it goes on watching from the new list.
    h.api.apply(green_slice("web-green-a", &pods(2, 2)));
    h.until(&["10.1.0.1:8080", "10.1.0.2:8080"]).await;
}

#[tokio::test]
async fn bookmarks_move_the_version_a_watch_resumes_from() {
    // Changes to another Service move the store's version; a bookmark
    // tells the watcher, so its next watch starts from there.
    let mut h = start(
        &[green_slice("web-green-a", &pods(1, 1))],
        KubeLimits::default(),
    )
    .await;
    h.next().await;
    for i in 0..5 {
        h.api.apply(slice(
            "shop",
            "web-blue",
            "web-blue-1",
            8080,
            &[("10.9.0.1", i % 2 == 0)],
        ));
    }
    let moved = h.api.resource_version();
    // Let a bookmark reach the watcher, then end the watch as its timeout
    // would: the next watch resumes from the bookmark's version, with no
    // new list.
    tokio::time::sleep(crate::support::kube_api::BOOKMARK_EVERY * 3).await;
    h.api.end_watches();
    support_wait(|| h.api.watches().len() >= 2).await;
    let watches = h.api.watches();
    assert_eq!(
        watches.last().and_then(|rv| rv.parse::<u64>().ok()),
        Some(moved),
        "resumed from the bookmarked version: {watches:?}"
    );
    assert_eq!(h.api.lists(), 1, "resumed, not relisted");
    // And still follows changes.
    h.api.apply(green_slice("web-green-a", &pods(1, 0)));
    h.until(&[]).await;
}

/// Waits up to 10 s for `check`.
async fn support_wait(check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn past_the_slice_bound_the_last_good_set_stays() {
    let limits = KubeLimits {
        max_slices: 2,
        ..KubeLimits::default()
    };
    let mut h = start(
        &[
            green_slice("web-green-a", &[("10.1.0.1".to_owned(), true)]),
            green_slice("web-green-b", &[("10.1.0.2".to_owned(), true)]),
        ],
        limits,
    )
    .await;
    assert_eq!(h.next().await.1, ["10.1.0.1:8080", "10.1.0.2:8080"]);
    h.api
        .apply(green_slice("web-green-c", &[("10.1.0.3".to_owned(), true)]));
    let problem = tokio::time::timeout(Duration::from_secs(10), h.problems.recv())
        .await
        .expect("the problem is reported")
        .unwrap();
    assert!(problem.contains("--kube-max-slices"), "{problem}");
    // Nothing was handed on: the fleet keeps its two endpoints.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), h.rx.recv())
            .await
            .is_err(),
        "a set was handed on past the bound"
    );
}

#[tokio::test]
async fn past_the_endpoint_bound_the_last_good_set_stays() {
    let limits = KubeLimits {
        max_endpoints: 10,
        ..KubeLimits::default()
    };
    let mut h = start(&[green_slice("web-green-a", &pods(10, 10))], limits).await;
    assert_eq!(h.next().await.1.len(), 10);
    h.api.apply(green_slice(
        "web-green-b",
        &[("10.3.0.1".to_owned(), false)],
    ));
    let problem = tokio::time::timeout(Duration::from_secs(10), h.problems.recv())
        .await
        .expect("the problem is reported")
        .unwrap();
    assert!(problem.contains("--kube-max-endpoints"), "{problem}");
    // Back under the bound: handed on again.
    h.api.delete("shop", "web-green-b");
    h.api.apply(green_slice("web-green-a", &pods(10, 9)));
    assert_eq!(h.next().await.1.len(), 9);
}

/// The config in `examples/kubernetes/teal-config.yaml`'s ConfigMap is one
/// `teal serve` accepts, and its fleets are the example's Services.
#[test]
fn the_example_configmap_holds_a_valid_config() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/kubernetes/teal-config.yaml"
    ))
    .unwrap();
    let (_, body) = text
        .split_once("  teal.yaml: |\n")
        .expect("the teal.yaml key");
    let config: String = body
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let parsed =
        teal::config::Config::parse(&config, "teal-config.yaml").unwrap_or_else(|d| panic!("{d}"));
    let web = &parsed.services["web"];
    for fleet in ["blue", "green"] {
        let k = web.fleets[fleet].kubernetes().expect("a Kubernetes fleet");
        assert_eq!(k.namespace, "shop");
        assert_eq!(k.service, format!("web-{fleet}"));
        assert_eq!(k.port, Some(KubernetesPort::Name("http".into())));
    }
    let apps = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/kubernetes/apps.yaml"
    ))
    .unwrap();
    for svc in ["name: web-blue", "name: web-green", "{name: http, port: 80"] {
        assert!(apps.contains(svc), "apps.yaml has {svc}");
    }
}

#[tokio::test]
async fn a_refused_set_is_offered_again_without_a_new_event() {
    let t0 = Instant::now();
    let mut h = start_refusing(
        &[green_slice("web-green-a", &pods(1, 1))],
        KubeLimits::default(),
        1,
    )
    .await;
    let (_, set, at) = h.next().await;
    assert_eq!(set, ["10.1.0.1:8080"]);
    let waited = at - t0;
    assert!(
        waited >= teal::kubernetes::watch::REFUSED_RETRY,
        "offered again after {waited:?}"
    );
    assert_eq!(
        h.api.lists(),
        1,
        "from what the watcher holds, not a new list"
    );
}

/// A slice labelled for the Service by someone who may create slices in
/// the namespace, not by the EndpointSlice controller.
fn hand_made(name: &str, ip: &str) -> serde_json::Value {
    let mut s = slice("shop", "web-green", name, 8080, &[(ip, true)]);
    s["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] = "someone".into();
    s
}

#[tokio::test]
async fn slices_not_made_by_the_endpointslice_controller_are_not_taken() {
    let mut h = start(
        &[
            green_slice("web-green-a", &pods(1, 1)),
            hand_made("web-green-evil", "10.66.0.1"),
        ],
        KubeLimits::default(),
    )
    .await;
    let (_, first, _) = h.next().await;
    assert_eq!(
        first,
        ["10.1.0.1:8080"],
        "the listed hand-made slice is not taken"
    );
    // Nor one added later, over the watch; the controller's next change is.
    h.api.apply(hand_made("web-green-evil-2", "10.66.0.2"));
    h.api.apply(green_slice("web-green-a", &pods(2, 2)));
    let seen = h.until(&["10.1.0.1:8080", "10.1.0.2:8080"]).await;
    assert!(
        seen.iter()
            .all(|(_, set, _)| set.iter().all(|a| !a.starts_with("10.66."))),
        "{seen:?}"
    );

    // Configured to take any manager's slices, the fleet takes them.
    let mut any = start_fleet(
        &[
            green_slice("web-green-a", &pods(1, 1)),
            hand_made("web-green-mesh", "10.66.0.1"),
        ],
        KubeLimits::default(),
        0,
        KubernetesFleet {
            managed_by: None,
            ..green()
        },
    )
    .await;
    any.until(&["10.1.0.1:8080", "10.66.0.1:8080"]).await;
}
