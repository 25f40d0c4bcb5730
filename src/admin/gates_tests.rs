use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::watch;
use tower_service::Service;

use super::*;
use crate::rollout::fixtures::{service_status, split};
use crate::rollout::{
    Applied, CheckResult, HistoryEntry, Operation, Outcome, Phase, Progress, Reason, Verb,
};
use crate::xds::ProxyStatus;
use crate::xds::resources::PerType;

/// `web`, blue 100, its `acked` of 3 proxies in sync.
fn web(acked: usize) -> ServiceStatus {
    ServiceStatus {
        applied: Applied {
            acked,
            total: 3,
            waiting_for: (acked..3).map(|i| format!("p{i}")).collect(),
            rejecting: Vec::new(),
            groups: Vec::new(),
        },
        confirmed: (acked == 3).then(|| split(&[("blue", 100), ("green", 0)])),
        ..service_status("web", &[("blue", 100), ("green", 0)])
    }
}

/// A backend that knows one service, as `status` says.
struct OneService(std::sync::Mutex<ServiceStatus>);

#[tonic::async_trait]
impl Backend for OneService {
    async fn status(&self, service: Option<&str>) -> Result<StatusView, RolloutError> {
        let s = self.0.lock().expect("not poisoned").clone();
        if service.is_some_and(|name| name != s.name) {
            return Err(RolloutError::UnknownService {
                service: service.unwrap_or_default().to_owned(),
                known: vec![s.name],
            });
        }
        Ok(StatusView {
            version: None,
            services: vec![s],
        })
    }
    fn proxies(&self) -> Vec<ProxyStatus> {
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
    async fn history(&self, _: &str) -> Result<Vec<HistoryEntry>, RolloutError> {
        Ok(Vec::new())
    }
}

/// `request` answered by the gates over a backend holding `s`: the status
/// and the JSON body.
async fn ask(s: ServiceStatus, limits: GateLimits, request: Request<Body>) -> (StatusCode, Value) {
    let mut router = router(Arc::new(OneService(std::sync::Mutex::new(s))), limits);
    std::future::poll_fn(|cx| Service::<Request<Body>>::poll_ready(&mut router, cx))
        .await
        .expect("ready");
    let response = router.call(request).await.expect("infallible");
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&body)));
    (status, json)
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).expect("request")
}

fn flagger(body: impl Into<Body>) -> Request<Body> {
    Request::post("/v1/gates/flagger")
        .header("content-type", "application/json")
        .body(body.into())
        .expect("request")
}

#[tokio::test]
async fn a_service_every_proxy_holds_reads_confirmed() {
    let (status, json) = ask(web(3), GateLimits::default(), get("/v1/services/web")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["confirmed"], true);
    assert_eq!(json["reason"], Value::Null);
    assert_eq!(json["weights"], json!({"blue": 100, "green": 0}));
    assert_eq!(json["confirmed_weights"], json["weights"]);
    assert_eq!(json["pending_weights"], Value::Null);
    assert_eq!(json["proxies"]["acked"], 3);
    assert_eq!(json["route"], Value::Null);
}

#[tokio::test]
async fn a_running_step_reads_unconfirmed_with_what_is_pending() {
    let mut s = web(3);
    s.confirmed = Some(s.weights.clone());
    s.in_progress = Some(Progress {
        id: 4,
        service: "web".into(),
        verb: Verb::Shift,
        phase: Phase::Confirming,
        step: 1,
        steps: 2,
        target: split(&[("blue", 50), ("green", 50)]),
        version: None,
        acked: 2,
        total: 3,
        waiting_for: vec!["p2".into()],
        not_waiting_for: Vec::new(),
        checks: Vec::new(),
        message: "waiting".into(),
        warnings: Vec::new(),
        outcome: None,
    });
    let (status, json) = ask(s.clone(), GateLimits::default(), get("/v1/services/web")).await;
    assert_eq!(status, StatusCode::OK, "the read itself succeeds");
    assert_eq!(json["confirmed"], false);
    assert_eq!(json["unconfirmed"], "in_progress");
    assert_eq!(json["pending_weights"], json!({"blue": 50, "green": 50}));
    assert_eq!(json["confirmed_weights"], json!({"blue": 100, "green": 0}));
    assert_eq!(json["in_progress"]["waiting_for"], json!(["p2"]));

    let payload = r#"{"name":"web","namespace":"shop","phase":"Progressing","checksum":"x"}"#;
    let (status, json) = ask(s, GateLimits::default(), flagger(payload)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        json["reason"]
            .as_str()
            .is_some_and(|r| r.contains("shift #4")),
        "{json}"
    );
}

#[tokio::test]
async fn flagger_passes_only_when_every_proxy_confirmed() {
    let payload = r#"{"name":"web","namespace":"shop","phase":"Progressing","checksum":"abc","type":"confirm-traffic-increase","metadata":{}}"#;
    let (status, json) = ask(web(2), GateLimits::default(), flagger(payload)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(json["unconfirmed"], "proxies");
    let (status, json) = ask(web(3), GateLimits::default(), flagger(payload)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["canary"]["namespace"], "shop");

    let mut failed = web(3);
    failed.last_change = Some(HistoryEntry {
        id: 8,
        verb: Verb::Shift,
        actor: "admin".into(),
        started: SystemTime::UNIX_EPOCH,
        finished: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
        from: split(&[("blue", 100)]),
        to: split(&[("blue", 100)]),
        target: None,
        version: None,
        outcome: Outcome::RolledBack {
            reason: Reason::Recorded("p1 rejected it".into()),
        },
        convergence: None,
        acks: Vec::new(),
        warnings: Vec::new(),
        not_waited_for: Vec::new(),
    });
    let (status, json) = ask(failed, GateLimits::default(), flagger(payload)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(json["unconfirmed"], "last_change");
}

#[tokio::test]
async fn the_canary_maps_to_metadata_service_first() {
    let payload =
        r#"{"name":"podinfo","namespace":"shop","phase":"Promoting","metadata":{"service":"web"}}"#;
    let (status, json) = ask(web(3), GateLimits::default(), flagger(payload)).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["service"], "web");
    let payload = r#"{"name":"podinfo","namespace":"shop","phase":"Promoting"}"#;
    let (status, json) = ask(web(3), GateLimits::default(), flagger(payload)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        json["error"]
            .as_str()
            .is_some_and(|e| e.contains("\"podinfo\"")),
        "{json}"
    );
}

#[tokio::test]
async fn hostile_paths_and_payloads_get_a_clear_4xx() {
    let limits = GateLimits {
        max_request_bytes: 1024,
        max_concurrent: 1,
    };
    let long = format!("/v1/services/{}", "a".repeat(MAX_SERVICE_NAME + 1));
    for (request, want) in [
        (get(&long), StatusCode::BAD_REQUEST),
        (get("/v1/services/w%20b"), StatusCode::BAD_REQUEST),
        (get("/v1/services/%FF%FE"), StatusCode::BAD_REQUEST),
        (get("/v1/services/api"), StatusCode::NOT_FOUND),
        (get("/v1/other"), StatusCode::NOT_FOUND),
        (get("/v1/services/"), StatusCode::NOT_FOUND),
        (get("/v1/gates/flagger"), StatusCode::METHOD_NOT_ALLOWED),
        (
            Request::delete("/v1/services/web")
                .body(Body::empty())
                .expect("request"),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
        (flagger("not json"), StatusCode::BAD_REQUEST),
        (flagger("{}"), StatusCode::BAD_REQUEST),
        (flagger(r#"{"name": 3}"#), StatusCode::BAD_REQUEST),
        (
            flagger(r#"{"name":"x","metadata":{"service":["web"]}}"#),
            StatusCode::BAD_REQUEST,
        ),
        (
            flagger(format!(r#"{{"name":"{}"}}"#, "w".repeat(2000))),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            flagger(r#"{"name":"web\u202e\u0000"}"#),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let what = format!("{} {}", request.method(), request.uri());
        let (status, json) = ask(web(3), limits, request).await;
        assert_eq!(status, want, "{what}: {json}");
        let message = json["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {json}"));
        assert!(
            !message.chars().any(crate::text::needs_escape),
            "{what}: the error echoes raw control or bidi characters: {message:?}"
        );
    }
}

#[tokio::test]
async fn a_body_without_a_length_is_cut_at_the_limit() {
    let limits = GateLimits {
        max_request_bytes: 1024,
        max_concurrent: 1,
    };
    let chunks = futures_like_stream(4096);
    let (status, _) = ask(web(3), limits, flagger(chunks)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
}

/// A body of `n` bytes sent in chunks, with no length up front.
fn futures_like_stream(n: usize) -> Body {
    let chunks = (0..n / 64).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 64])));
    Body::from_stream(tokio_stream::iter(chunks))
}

/// A backend whose status takes a while, counting the calls in flight.
struct Slow {
    inner: OneService,
    now: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

#[tonic::async_trait]
impl Backend for Slow {
    async fn status(&self, service: Option<&str>) -> Result<StatusView, RolloutError> {
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.now.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(n, SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.now.fetch_sub(1, SeqCst);
        self.inner.status(service).await
    }
    fn proxies(&self) -> Vec<ProxyStatus> {
        Vec::new()
    }
    fn current_versions(&self) -> BTreeMap<String, PerType<String>> {
        BTreeMap::new()
    }
    async fn start(
        &self,
        o: Operation,
        a: &str,
    ) -> Result<watch::Receiver<Progress>, RolloutError> {
        self.inner.start(o, a).await
    }
    async fn follow(&self, id: u64) -> Result<watch::Receiver<Progress>, RolloutError> {
        self.inner.follow(id).await
    }
    async fn abort(&self, id: u64, a: &str) -> Result<(), RolloutError> {
        self.inner.abort(id, a).await
    }
    async fn verify(&self, s: &str, f: &str) -> Result<Vec<CheckResult>, RolloutError> {
        self.inner.verify(s, f).await
    }
    async fn history(&self, s: &str) -> Result<Vec<HistoryEntry>, RolloutError> {
        self.inner.history(s).await
    }
}

#[tokio::test]
async fn no_more_than_the_limit_are_answered_at_once_and_the_rest_wait_their_turn() {
    let backend = Arc::new(Slow {
        inner: OneService(std::sync::Mutex::new(web(3))),
        now: Default::default(),
        most: Default::default(),
    });
    let limits = GateLimits {
        max_request_bytes: 1024,
        max_concurrent: 2,
    };
    let router = router(backend.clone(), limits);
    let mut all = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut router = router.clone();
        all.spawn(async move {
            std::future::poll_fn(|cx| Service::<Request<Body>>::poll_ready(&mut router, cx))
                .await
                .expect("ready");
            router
                .call(get("/v1/services/web"))
                .await
                .expect("infallible")
                .status()
        });
    }
    while let Some(status) = all.join_next().await {
        assert_eq!(
            status.expect("join"),
            StatusCode::OK,
            "every one is answered"
        );
    }
    assert_eq!(backend.most.load(std::sync::atomic::Ordering::SeqCst), 2);
}

/// A follower's backend: it knows the service, another replica leads.
struct Follower(OneService);

#[tonic::async_trait]
impl Backend for Follower {
    fn leading(&self) -> Result<(), RolloutError> {
        Err(RolloutError::NotLeader {
            leader: Some("10.0.0.7:18001".into()),
        })
    }
    async fn status(&self, service: Option<&str>) -> Result<StatusView, RolloutError> {
        self.0.status(service).await
    }
    fn proxies(&self) -> Vec<ProxyStatus> {
        Vec::new()
    }
    fn current_versions(&self) -> BTreeMap<String, PerType<String>> {
        BTreeMap::new()
    }
    async fn start(
        &self,
        o: Operation,
        a: &str,
    ) -> Result<watch::Receiver<Progress>, RolloutError> {
        self.0.start(o, a).await
    }
    async fn follow(&self, id: u64) -> Result<watch::Receiver<Progress>, RolloutError> {
        self.0.follow(id).await
    }
    async fn abort(&self, id: u64, a: &str) -> Result<(), RolloutError> {
        self.0.abort(id, a).await
    }
    async fn verify(&self, s: &str, f: &str) -> Result<Vec<CheckResult>, RolloutError> {
        self.0.verify(s, f).await
    }
    async fn history(&self, s: &str) -> Result<Vec<HistoryEntry>, RolloutError> {
        self.0.history(s).await
    }
}

#[tokio::test]
async fn a_follower_never_says_confirmed_and_names_the_leader() {
    let backend = Arc::new(Follower(OneService(std::sync::Mutex::new(web(3)))));
    for request in [
        get("/v1/services/web"),
        flagger(r#"{"name":"web","namespace":"shop","phase":"Progressing"}"#),
    ] {
        let mut router = router(backend.clone(), GateLimits::default());
        std::future::poll_fn(|cx| Service::<Request<Body>>::poll_ready(&mut router, cx))
            .await
            .expect("ready");
        let response = router.call(request).await.expect("infallible");
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let json: Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(json["leader"], "10.0.0.7:18001", "{json}");
        assert_eq!(json["confirmed"], Value::Null, "{json}");
    }
}
