//! A Kubernetes API server for EndpointSlices, in the test process, that
//! speaks the real list/watch protocol over HTTP/1.1 on 127.0.0.1:
//!
//! - `GET /apis/discovery.k8s.io/v1/namespaces/NS/endpointslices?labelSelector=...`
//!   answers an `EndpointSliceList` whose `metadata.resourceVersion` is the
//!   store's;
//! - the same with `watch=true&resourceVersion=RV` answers a chunked stream
//!   of watch events, one JSON object per line: every change after `RV`
//!   (`ADDED`, `MODIFIED`, `DELETED`), then each new one as it happens, and
//!   a `BOOKMARK` with the current version every [`BOOKMARK_EVERY`] when
//!   `allowWatchBookmarks=true`;
//! - a watch from a version older than the last compaction gets what a
//!   real API server sends, a `200` and one `ERROR` event carrying a
//!   `Status` with code 410 (`Expired`); [`FakeKube::compact`] also ends
//!   every open watch with that event; [`FakeKube::end_watches`] ends them
//!   cleanly, as a watch's timeout does; [`FakeKube::gone_as_http`]
//!   answers such watches with an HTTP `410 Gone` instead.
//!
//! Objects are `discovery.k8s.io/v1` EndpointSlices built as the
//! EndpointSlice controller writes them ([`slice`]), and the Gateway API's
//! `HTTPRoute`s, `Gateway`s and (cluster-scoped) `GatewayClass`es
//! ([`route`], [`gateway`], [`gateway_class`]), all with list/watch (label
//! and `metadata.name` field selectors) and `GET` by name. Like a real API
//! server it bumps `metadata.generation` when an object's `spec` changes,
//! keeps `status` apart (written only through `.../status`), and answers a
//! write carrying a stale `metadata.resourceVersion` with `409 Conflict`:
//! `PUT` and merge `PATCH` of an object and of its `status`.
//! [`FakeKube::conflict_status_writes`] makes the next status writes meet
//! a concurrent change (another writer bumps the version just before), and
//! [`FakeKube::status_writes`] shows every status write and its answer.
//! teal reaches the server through a kubeconfig file
//! ([`FakeKube::kubeconfig`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// How often an open watch that asked for bookmarks gets one.
pub const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

/// One change, as a watch event carries it.
#[derive(Clone, Debug)]
struct Change {
    rv: u64,
    plural: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

/// One write to a `.../status` subresource, as answered.
#[derive(Clone, Debug)]
pub struct StatusWrite {
    /// `PATCH` or `PUT`.
    pub method: String,
    /// The HTTP status answered (200, or 409 on a conflict).
    pub code: u16,
    /// The body sent.
    pub body: Value,
    /// When it arrived.
    pub at: std::time::Instant,
}

/// (plural, namespace or "" for cluster-scoped, name).
type Key = (String, String, String);

/// The API group and version, and the kind, of each plural served.
fn kind_of(plural: &str) -> Option<(&'static str, &'static str)> {
    match plural {
        "endpointslices" => Some(("discovery.k8s.io/v1", "EndpointSlice")),
        "httproutes" => Some(("gateway.networking.k8s.io/v1", "HTTPRoute")),
        "gateways" => Some(("gateway.networking.k8s.io/v1", "Gateway")),
        "gatewayclasses" => Some(("gateway.networking.k8s.io/v1", "GatewayClass")),
        _ => None,
    }
}

fn plural_of(kind: &str) -> &'static str {
    match kind {
        "EndpointSlice" => "endpointslices",
        "HTTPRoute" => "httproutes",
        "Gateway" => "gateways",
        "GatewayClass" => "gatewayclasses",
        other => panic!("the fake API server does not serve {other}"),
    }
}

/// RFC 7386 JSON merge patch.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// What is sent on the live feed: a change, or "end every open watch
/// with a 410".
#[derive(Clone, Debug)]
enum Live {
    Change(Change),
    Expire,
    End,
}

#[derive(Default)]
struct Store {
    rv: u64,
    /// Every object as last written.
    objects: BTreeMap<Key, Value>,
    /// Status writes still to meet a concurrent change.
    conflicts: usize,
    /// Every status write, in order.
    status_writes: Vec<StatusWrite>,
    /// Every change since the last compaction.
    history: Vec<Change>,
    /// Watches from a version below this get a 410.
    oldest: u64,
    /// Watches from before `oldest` get an HTTP 410, not an event.
    gone_as_http: bool,
    lists: usize,
    watches: Vec<String>,
}

/// The fake API server; it stops when dropped.
pub struct FakeKube {
    /// Where it listens.
    pub addr: SocketAddr,
    store: Arc<Mutex<Store>>,
    live: broadcast::Sender<Live>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeKube {
    /// Starts the server on a free port of 127.0.0.1.
    pub async fn start() -> FakeKube {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server");
        let addr = listener.local_addr().expect("its address");
        let store = Arc::new(Mutex::new(Store {
            rv: 1000,
            ..Store::default()
        }));
        let (live, _) = broadcast::channel(4096);
        let (s, l) = (store.clone(), live.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (s, l) = (s.clone(), l.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(req, s.clone(), l.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeKube {
            addr,
            store,
            live,
            task,
        }
    }

    /// Writes a kubeconfig for this server into `dir` and returns its path.
    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: teal\n    namespace: default\n\
             current-context: fake\nusers:\n- name: teal\n  user:\n    token: not-a-secret\n",
            self.addr
        );
        std::fs::write(&path, text).expect("write the kubeconfig");
        path
    }

    /// Creates or replaces an object (`ADDED` or `MODIFIED`), as a client
    /// writing the whole object would: the stored `status` stays, and
    /// `generation` moves when `spec` changes.
    pub fn apply(&self, object: Value) {
        let mut st = self.store.lock().expect("store");
        st.put(object, false);
        let change = st.history.last().cloned().expect("a change");
        let _ = self.live.send(Live::Change(change));
    }

    /// Deletes a slice (`DELETED`, with the object as last seen).
    pub fn delete(&self, namespace: &str, name: &str) {
        let mut st = self.store.lock().expect("store");
        let key = (
            "endpointslices".to_owned(),
            namespace.to_owned(),
            name.to_owned(),
        );
        let Some(mut object) = st.objects.remove(&key) else {
            return;
        };
        st.rv += 1;
        let rv = st.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let change = Change {
            rv,
            plural: key.0,
            namespace: namespace.to_owned(),
            kind: "DELETED",
            object,
        };
        st.history.push(change.clone());
        let _ = self.live.send(Live::Change(change));
    }

    /// The object as stored now.
    pub fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let st = self.store.lock().expect("store");
        st.objects
            .get(&(plural.to_owned(), namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// The next `n` status writes meet a concurrent change: just before
    /// each, another writer changes the object (its version moves), so a
    /// write carrying the version read is answered 409.
    pub fn conflict_status_writes(&self, n: usize) {
        self.store.lock().expect("store").conflicts = n;
    }

    /// Every status write so far, in order.
    pub fn status_writes(&self) -> Vec<StatusWrite> {
        self.store.lock().expect("store").status_writes.clone()
    }

    /// Forgets the history (as etcd's compaction does): every open watch
    /// ends with an `ERROR` 410 event, and so does any watch from a version
    /// before now.
    pub fn compact(&self) {
        let mut st = self.store.lock().expect("store");
        st.oldest = st.rv + 1;
        st.history.clear();
        let _ = self.live.send(Live::Expire);
    }

    /// Ends every open watch cleanly, as the server does at the watch's
    /// `timeoutSeconds`: the client watches again from the last version it
    /// saw (an object's, or a bookmark's).
    pub fn end_watches(&self) {
        let _ = self.live.send(Live::End);
    }

    /// From now on, answers a watch from a version older than the last
    /// compaction with an HTTP `410 Gone` (and a `Status` body) rather
    /// than a `200` and an `ERROR` event.
    pub fn gone_as_http(&self) {
        self.store.lock().expect("store").gone_as_http = true;
    }

    /// How many list requests were answered.
    pub fn lists(&self) -> usize {
        self.store.lock().expect("store").lists
    }

    /// The `resourceVersion` of every watch request, in order.
    pub fn watches(&self) -> Vec<String> {
        self.store.lock().expect("store").watches.clone()
    }

    /// The store's current `resourceVersion`.
    pub fn resource_version(&self) -> u64 {
        self.store.lock().expect("store").rv
    }
}

impl Store {
    /// Stores `object` (whole, or only its status when `status_only`),
    /// bumping the version and, on a new `spec`, the generation; records
    /// the change. The caller broadcasts it.
    fn put(&mut self, mut object: Value, status_only: bool) -> Value {
        let plural = plural_of(object["kind"].as_str().expect("kind")).to_owned();
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_owned();
        let key = (plural.clone(), namespace.clone(), name);
        let before = self.objects.get(&key).cloned();
        if let Some(before) = &before {
            if status_only {
                let status = object["status"].take();
                object = before.clone();
                object["status"] = status;
            } else if object.get("status").is_none() && before.get("status").is_some() {
                object["status"] = before["status"].clone();
            }
            let generation = before["metadata"]["generation"].as_u64().unwrap_or(1);
            let moved = object.get("spec") != before.get("spec");
            object["metadata"]["generation"] = json!(generation + u64::from(moved));
            object["metadata"]["uid"] = before["metadata"]["uid"].clone();
        } else {
            object["metadata"]["generation"] = json!(1);
            object["metadata"]["uid"] = json!(format!("uid-{}", self.rv));
        }
        self.rv += 1;
        object["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key, object.clone());
        self.history.push(Change {
            rv: self.rv,
            plural,
            namespace,
            kind: if before.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            },
            object: object.clone(),
        });
        object
    }
}

/// A GatewayClass whose controller is `controller`.
pub fn gateway_class(name: &str, controller: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": name},
        "spec": {"controllerName": controller}
    })
}

/// A Gateway of class `class` with one HTTP listener.
pub fn gateway(namespace: &str, name: &str, class: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"gatewayClassName": class,
                 "listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]}
    })
}

/// An HTTPRoute in `namespace` attached to `parents` (parentRef objects)
/// whose one rule sends `/` to `backends` (Service name, weight).
pub fn route(namespace: &str, name: &str, parents: Value, backends: &[(&str, i64)]) -> Value {
    let refs: Vec<Value> = backends
        .iter()
        .map(|(n, w)| json!({"group": "", "kind": "Service", "name": n, "port": 80, "weight": w}))
        .collect();
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "parentRefs": parents,
            "hostnames": ["web.example"],
            "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                       "backendRefs": refs}]
        }
    })
}

/// An EndpointSlice of Service `service` in `namespace`, as the
/// EndpointSlice controller writes it: one `http` port (`port`) and one
/// endpoint per `(ip, ready)`, with the conditions of a running pod (ready)
/// or of one failing its readiness probe.
pub fn slice(
    namespace: &str,
    service: &str,
    name: &str,
    port: u16,
    pods: &[(&str, bool)],
) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .enumerate()
        .map(|(i, (ip, ready))| {
            json!({
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": ready, "terminating": false},
                "nodeName": format!("node-{}", i % 3),
                "zone": format!("zone-{}", i % 2),
                "targetRef": {"kind": "Pod", "namespace": namespace, "name": format!("{service}-{i}")}
            })
        })
        .collect();
    json!({
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "name": name,
            "generateName": format!("{service}-"),
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"
            },
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service,
                                 "uid": "00000000-0000-0000-0000-000000000001",
                                 "controller": true, "blockOwnerDeletion": true}]
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "protocol": "TCP", "port": port}]
    })
}

type Body = BoxBody<Bytes, Infallible>;

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn full(code: StatusCode, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .expect("a response")
}

/// `a%2Fb` → `a/b` (enough for label selectors and versions).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `object` passes a field selector (`metadata.name=X`, the only
/// field teal selects on).
fn fields(object: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector else { return true };
    sel.split(',').all(|term| match term.split_once('=') {
        Some(("metadata.name", v)) => object["metadata"]["name"].as_str() == Some(v),
        Some(("metadata.namespace", v)) => object["metadata"]["namespace"].as_str() == Some(v),
        _ => false,
    })
}

/// Whether `object` has every label of `selector` (`k=v[,k=v...]`, the
/// equality-based selectors teal sends).
fn matches(object: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector else { return true };
    sel.split(',').all(|term| {
        term.split_once('=')
            .is_some_and(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v))
    })
}

/// Where a request goes: `/apis/GROUP/VERSION/[namespaces/NS/]PLURAL[/NAME[/status]]`.
struct Target {
    plural: String,
    namespace: String,
    name: Option<String>,
    status: bool,
}

fn target(path: &str) -> Option<Target> {
    let rest = path.strip_prefix("/apis/")?;
    let parts: Vec<&str> = rest.split('/').collect();
    let (group_version, rest) = parts.split_at_checked(2)?;
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] => ((*ns).to_owned(), rest),
        rest => (String::new(), rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some((*name).to_owned()), false),
        [plural, name, "status"] => (*plural, Some((*name).to_owned()), true),
        _ => return None,
    };
    let (api_version, _) = kind_of(plural)?;
    (group_version.join("/") == api_version).then(|| Target {
        plural: plural.to_owned(),
        namespace,
        name,
        status,
    })
}

fn not_found() -> Response<Body> {
    full(
        StatusCode::NOT_FOUND,
        &status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        ),
    )
}

/// A `GET`, `PUT` or `PATCH` of one object or of its status.
async fn one(
    req: Request<hyper::body::Incoming>,
    t: Target,
    name: String,
    store: Arc<Mutex<Store>>,
    live: broadcast::Sender<Live>,
) -> Response<Body> {
    let method = req.method().clone();
    let merge = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/merge-patch+json"));
    let key = (t.plural.clone(), t.namespace.clone(), name.clone());
    if method == hyper::Method::GET {
        let st = store.lock().expect("store");
        return match st.objects.get(&key) {
            Some(o) => full(StatusCode::OK, o),
            None => full(
                StatusCode::NOT_FOUND,
                &status(404, "NotFound", &format!("{} {name:?} not found", t.plural)),
            ),
        };
    }
    if method != hyper::Method::PUT && method != hyper::Method::PATCH {
        return full(
            StatusCode::METHOD_NOT_ALLOWED,
            &status(405, "MethodNotAllowed", "method not allowed"),
        );
    }
    if method == hyper::Method::PATCH && !merge {
        return full(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            &status(415, "UnsupportedMediaType", "only merge patches are served"),
        );
    }
    let Ok(bytes) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
        return full(StatusCode::BAD_REQUEST, &status(400, "BadRequest", "body"));
    };
    let Ok(body) = serde_json::from_slice::<Value>(&bytes) else {
        return full(
            StatusCode::BAD_REQUEST,
            &status(400, "BadRequest", "not JSON"),
        );
    };
    let mut st = store.lock().expect("store");
    let Some(current) = st.objects.get(&key).cloned() else {
        return full(
            StatusCode::NOT_FOUND,
            &status(404, "NotFound", &format!("{} {name:?} not found", t.plural)),
        );
    };
    if t.status && st.conflicts > 0 {
        // Another writer gets there first.
        st.conflicts -= 1;
        let mut other = current.clone();
        other["metadata"]["annotations"]["fake/concurrent-write"] = json!(st.rv.to_string());
        st.put(other, false);
        let change = st.history.last().cloned().expect("a change");
        let _ = live.send(Live::Change(change));
    }
    let current = st.objects.get(&key).cloned().expect("still there");
    let sent_rv = body["metadata"]["resourceVersion"]
        .as_str()
        .map(str::to_owned);
    let conflict = sent_rv
        .is_some_and(|rv| Some(rv.as_str()) != current["metadata"]["resourceVersion"].as_str());
    let answer = |st: &mut Store, code: u16| {
        if t.status {
            st.status_writes.push(StatusWrite {
                method: method.to_string(),
                code,
                body: body.clone(),
                at: std::time::Instant::now(),
            });
        }
    };
    if conflict {
        answer(&mut st, 409);
        return full(
            StatusCode::CONFLICT,
            &status(
                409,
                "Conflict",
                &format!(
                    "Operation cannot be fulfilled on {} \"{name}\": the object has been \
                     modified; please apply your changes to the latest version and try again",
                    t.plural
                ),
            ),
        );
    }
    let mut next = if method == hyper::Method::PUT {
        body.clone()
    } else {
        let mut o = current.clone();
        merge_patch(&mut o, &body);
        o
    };
    for f in ["kind", "apiVersion"] {
        next[f] = current[f].clone();
    }
    next["metadata"]["name"] = current["metadata"]["name"].clone();
    next["metadata"]["namespace"] = current["metadata"]["namespace"].clone();
    let written = if t.status {
        st.put(next, true)
    } else {
        // The main resource ignores status.
        next["status"] = current.get("status").cloned().unwrap_or(Value::Null);
        if next["status"].is_null() {
            next.as_object_mut().expect("an object").remove("status");
        }
        st.put(next, false)
    };
    answer(&mut st, 200);
    let change = st.history.last().cloned().expect("a change");
    let _ = live.send(Live::Change(change));
    full(StatusCode::OK, &written)
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    store: Arc<Mutex<Store>>,
    live: broadcast::Sender<Live>,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_owned();
    let query: BTreeMap<String, String> = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    let Some(t) = target(&path) else {
        return Ok(not_found());
    };
    if let Some(name) = t.name.clone() {
        return Ok(one(req, t, name, store, live).await);
    }
    let (plural, namespace) = (t.plural, t.namespace);
    let field = query.get("fieldSelector").cloned();
    let selector = query.get("labelSelector").cloned();
    if query.get("watch").map(String::as_str) != Some("true") {
        let mut st = store.lock().expect("store");
        st.lists += 1;
        let items: Vec<Value> = st
            .objects
            .iter()
            .filter(|((p, ns, _), o)| {
                *p == plural
                    && (namespace.is_empty() || *ns == namespace)
                    && matches(o, selector.as_deref())
                    && fields(o, field.as_deref())
            })
            .map(|(_, o)| o.clone())
            .collect();
        let (api_version, kind) = kind_of(&plural).expect("a served kind");
        let list = json!({
            "kind": format!("{kind}List"),
            "apiVersion": api_version,
            "metadata": {"resourceVersion": st.rv.to_string()},
            "items": items
        });
        return Ok(full(StatusCode::OK, &list));
    }
    let from: u64 = query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let (tx, rx) = mpsc::channel::<Bytes>(1024);
    let mut feed = live.subscribe();
    let backlog: Vec<Change>;
    let mut now_rv;
    {
        let mut st = store.lock().expect("store");
        st.watches.push(from.to_string());
        if from < st.oldest && st.gone_as_http {
            return Ok(full(
                StatusCode::GONE,
                &status(410, "Gone", &format!("too old resource version: {from}")),
            ));
        }
        if from < st.oldest {
            let event = json!({"type": "ERROR", "object": status(410, "Expired",
                &format!("too old resource version: {from} ({})", st.oldest))});
            let _ = tx.try_send(Bytes::from(format!("{event}\n")));
            drop(tx);
            return Ok(stream(rx));
        }
        backlog = st
            .history
            .iter()
            .filter(|c| {
                c.rv > from
                    && c.plural == plural
                    && (namespace.is_empty() || c.namespace == namespace)
                    && matches(&c.object, selector.as_deref())
                    && fields(&c.object, field.as_deref())
            })
            .cloned()
            .collect();
        now_rv = st.rv;
    }
    tokio::spawn(async move {
        let line = |v: Value| Bytes::from(format!("{v}\n"));
        let mut last = from;
        for c in backlog {
            last = c.rv;
            if tx
                .send(line(json!({"type": c.kind, "object": c.object})))
                .await
                .is_err()
            {
                return;
            }
        }
        let mut tick = tokio::time::interval(BOOKMARK_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                got = feed.recv() => match got {
                    Ok(Live::Change(c)) => {
                        now_rv = now_rv.max(c.rv);
                        if c.rv <= last
                            || c.plural != plural
                            || (!namespace.is_empty() && c.namespace != namespace)
                            || !matches(&c.object, selector.as_deref())
                            || !fields(&c.object, field.as_deref())
                        {
                            continue;
                        }
                        last = c.rv;
                        if tx.send(line(json!({"type": c.kind, "object": c.object}))).await.is_err() {
                            return;
                        }
                    }
                    Ok(Live::End) => return,
                    Ok(Live::Expire) | Err(_) => {
                        let _ = tx.send(line(json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version")}))).await;
                        return;
                    }
                },
                _ = tick.tick(), if bookmarks => {
                    let (api_version, kind) = kind_of(&plural).expect("a served kind");
                    let bm = json!({"type": "BOOKMARK", "object": {"kind": kind,
                        "apiVersion": api_version,
                        "metadata": {"resourceVersion": now_rv.max(last).to_string()}}});
                    if tx.send(line(bm)).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    Ok(stream(rx))
}

fn stream(rx: mpsc::Receiver<Bytes>) -> Response<Body> {
    let body =
        StreamBody::new(ReceiverStream::new(rx).map(|b| Ok::<_, Infallible>(Frame::data(b))));
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(body))
        .expect("a response")
}
