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
//! EndpointSlice controller writes them ([`slice`]). teal reaches the
//! server through a kubeconfig file ([`FakeKube::kubeconfig`]).

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
    namespace: String,
    kind: &'static str,
    object: Value,
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
    /// (namespace, name) -> the object as last written.
    slices: BTreeMap<(String, String), Value>,
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

    /// Creates or replaces a slice (`ADDED` or `MODIFIED`).
    pub fn apply(&self, mut object: Value) {
        let mut st = self.store.lock().expect("store");
        st.rv += 1;
        let rv = st.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let namespace = object["metadata"]["namespace"]
            .as_str()
            .expect("namespace")
            .to_owned();
        let name = object["metadata"]["name"]
            .as_str()
            .expect("name")
            .to_owned();
        let kind = if st
            .slices
            .insert((namespace.clone(), name), object.clone())
            .is_some()
        {
            "MODIFIED"
        } else {
            "ADDED"
        };
        let change = Change {
            rv,
            namespace,
            kind,
            object,
        };
        st.history.push(change.clone());
        let _ = self.live.send(Live::Change(change));
    }

    /// Deletes a slice (`DELETED`, with the object as last seen).
    pub fn delete(&self, namespace: &str, name: &str) {
        let mut st = self.store.lock().expect("store");
        st.rv += 1;
        let rv = st.rv;
        let Some(mut object) = st.slices.remove(&(namespace.to_owned(), name.to_owned())) else {
            return;
        };
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        let change = Change {
            rv,
            namespace: namespace.to_owned(),
            kind: "DELETED",
            object,
        };
        st.history.push(change.clone());
        let _ = self.live.send(Live::Change(change));
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

/// Whether `object` has every label of `selector` (`k=v[,k=v...]`, the
/// equality-based selectors teal sends).
fn matches(object: &Value, selector: Option<&str>) -> bool {
    let Some(sel) = selector else { return true };
    sel.split(',').all(|term| {
        term.split_once('=')
            .is_some_and(|(k, v)| object["metadata"]["labels"][k].as_str() == Some(v))
    })
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
    let Some(namespace) = path
        .strip_prefix("/apis/discovery.k8s.io/v1/namespaces/")
        .and_then(|rest| rest.strip_suffix("/endpointslices"))
        .map(str::to_owned)
    else {
        return Ok(full(
            StatusCode::NOT_FOUND,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
        ));
    };
    let selector = query.get("labelSelector").cloned();
    if query.get("watch").map(String::as_str) != Some("true") {
        let mut st = store.lock().expect("store");
        st.lists += 1;
        let items: Vec<Value> = st
            .slices
            .iter()
            .filter(|((ns, _), o)| *ns == namespace && matches(o, selector.as_deref()))
            .map(|(_, o)| o.clone())
            .collect();
        let list = json!({
            "kind": "EndpointSliceList",
            "apiVersion": "discovery.k8s.io/v1",
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
                c.rv > from && c.namespace == namespace && matches(&c.object, selector.as_deref())
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
                        if c.rv <= last || c.namespace != namespace || !matches(&c.object, selector.as_deref()) {
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
                    let bm = json!({"type": "BOOKMARK", "object": {"kind": "EndpointSlice",
                        "apiVersion": "discovery.k8s.io/v1",
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
