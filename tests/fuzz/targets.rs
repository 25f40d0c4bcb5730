//! The bodies of teal's fuzz targets, one plain function per target taking
//! the fuzzer's bytes.
//!
//! This file is compiled twice: by the libFuzzer binaries in
//! `tests/fuzz/fuzz_targets/` (nightly, `cargo fuzz`), and by the corpus
//! replay `tests/server/fuzz_replay.rs` (stable, part of `cargo test`),
//! which runs every file of `tests/fuzz/corpus/<target>/` through the same
//! function.
//!
//! A target fails by panicking. Besides "never panics", each asserts what
//! the code under test promises in its docs and tests:
//!
//! - [`xds_sotw`], [`xds_delta`]: a stream fed any sequence of requests and
//!   snapshots answers with well-formed responses of the requested type,
//!   at most one per type per input and one in flight per type, with
//!   unique nonces; never resends a version the stream NACKed; never sends
//!   a named subscriber a resource it did not subscribe to.
//! - [`config_yaml`]: `Config::parse` returns a config that translates into
//!   a servable snapshot, or diagnostics whose positions lie in the input.
//! - [`state_file`]: the file store loads any `state.json` as a state that
//!   saves and loads back unchanged, or refuses it with a typed error.
//! - [`admin_convert`]: any admin request that decodes becomes an operation
//!   that plans into valid steps and starts, or is refused with
//!   `INVALID_ARGUMENT` or `NOT_FOUND`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::OnceLock;
use std::time::Instant;

use arbitrary::{Arbitrary, Unstructured};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, VirtualHost, route::Action, route_action,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc;
use prost::Message;

use teal::admin::{convert, pb};
use teal::config::{Config, Weights, translate};
use teal::rollout::machine::{Origin, Rollout};
use teal::rollout::plan::{ServiceView, plan};
use teal::rollout::{Operation, RolloutError, Split};
use teal::state::{FileStore, StateError, StateStore};
use teal::xds::delta::DeltaStream;
use teal::xds::protocol::Output;
use teal::xds::resources::ResourceType;
use teal::xds::snapshot::{GroupResources, Snapshot, SnapshotInput};
use teal::xds::sotw::SotwStream;
use teal::xds::{Planner, StreamEvent, StreamKind};

// ---------------------------------------------------------------------------
// xDS stream machines
// ---------------------------------------------------------------------------

/// Inputs past this many steps are cut: longer sequences find nothing new
/// and only slow the fuzzer down.
const MAX_STEPS: usize = 64;

/// The names requests pick from: the snapshots' clusters (and endpoints),
/// listener and route, plus names the snapshots never have.
const NAMES: [&str; 8] = ["a", "b", "c", "d", "l", "r", "zzz", ""];

/// The resources a published snapshot can serve the `edge` group: clusters
/// (each with an assignment) and the cluster route `r` points at, which
/// may be one the group does not have.
const VARIANTS: [(&[&str], &str); 8] = [
    (&["a"], "a"),
    (&["a", "b"], "a"),
    (&["a", "c"], "c"),
    (&["c"], "c"),
    (&["a", "b", "c", "d"], "b"),
    (&[], "a"),
    (&["c"], "b"),
    (&["c"], "a"),
];

/// A resource name in a request.
#[derive(Arbitrary, Debug)]
enum NameChoice {
    Known(u8),
    Wildcard,
    Other(String),
}

impl NameChoice {
    fn name(&self) -> String {
        match self {
            NameChoice::Known(i) => NAMES[usize::from(*i) % NAMES.len()].to_owned(),
            NameChoice::Wildcard => "*".to_owned(),
            NameChoice::Other(s) => s.clone(),
        }
    }
}

/// The `node` of a request.
#[derive(Arbitrary, Debug)]
enum NodeChoice {
    Absent,
    Edge,
    /// Same id, another group: teal keeps the first request's group.
    OtherGroup,
    /// Another id: refused after the first request.
    OtherId,
    EmptyId,
}

impl NodeChoice {
    fn node(&self) -> Option<Node> {
        let node = |id: &str, cluster: &str| Node {
            id: id.into(),
            cluster: cluster.into(),
            ..Default::default()
        };
        match self {
            NodeChoice::Absent => None,
            NodeChoice::Edge => Some(node("proxy-1", "edge")),
            NodeChoice::OtherGroup => Some(node("proxy-1", "nobody")),
            NodeChoice::OtherId => Some(node("proxy-2", "edge")),
            NodeChoice::EmptyId => Some(node("", "edge")),
        }
    }
}

/// The `type_url` of a request.
#[derive(Arbitrary, Debug)]
enum TypeChoice {
    Known(u8),
    Empty,
    Other(String),
}

impl TypeChoice {
    fn url(&self) -> String {
        match self {
            TypeChoice::Known(i) => resource_type(*i).type_url().to_owned(),
            TypeChoice::Empty => String::new(),
            TypeChoice::Other(s) => s.clone(),
        }
    }
}

/// The `response_nonce` of a request.
#[derive(Arbitrary, Debug)]
enum NonceChoice {
    /// No nonce: a fresh ask.
    Empty,
    /// The last nonce the stream sent for the request's type (an ACK or
    /// NACK when it is still in flight).
    Last,
    /// Some earlier nonce of the stream, by number.
    Earlier(u8),
    Other(String),
}

/// One request, for either flavour (delta reads `names` as its
/// subscriptions; state of the world ignores the delta-only fields).
#[derive(Arbitrary, Debug)]
struct RequestChoice {
    node: NodeChoice,
    ty: TypeChoice,
    names: Vec<NameChoice>,
    unsubscribe: Vec<NameChoice>,
    initial: Vec<(NameChoice, String)>,
    nonce: NonceChoice,
    /// A NACK with this message.
    nack: Option<String>,
}

/// One thing that happens to a stream.
#[derive(Arbitrary, Debug)]
enum Step {
    Request(RequestChoice),
    /// teal publishes a new snapshot: variant number.
    Publish(u8),
}

/// A stream's method and what happens to it.
#[derive(Arbitrary, Debug)]
struct Script {
    /// `None`: ADS; else a per-type service.
    single: Option<u8>,
    steps: Vec<Step>,
}

fn resource_type(i: u8) -> ResourceType {
    ResourceType::ALL[usize::from(i) % ResourceType::ALL.len()]
}

fn route(name: &str, cluster: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        cluster.into(),
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Publishes variant `v` as version `seq` on top of `previous`, as the
/// snapshot writer does.
fn publish(seq: u64, v: u8, previous: Option<&Snapshot>) -> Snapshot {
    let (clusters, route_to) = VARIANTS[usize::from(v) % VARIANTS.len()];
    let group = GroupResources {
        clusters: clusters
            .iter()
            .map(|c| Cluster {
                name: (*c).into(),
                ..Default::default()
            })
            .collect(),
        endpoints: clusters
            .iter()
            .map(|c| ClusterLoadAssignment {
                cluster_name: (*c).into(),
                ..Default::default()
            })
            .collect(),
        listeners: vec![Listener {
            name: "l".into(),
            ..Default::default()
        }],
        routes: vec![route("r", route_to)],
    };
    let mut input = SnapshotInput::default();
    input.groups.insert("edge".into(), group);
    Snapshot::build(&seq.to_string(), &input, previous).expect("the variants are valid")
}

/// What a client that follows the xDS spec knows of its stream, kept
/// independently of the machine under test so the two can be compared.
#[derive(Default)]
struct Model {
    /// Every nonce the stream sent, in order.
    nonces: Vec<String>,
    /// Per type: the response waiting for an ACK or NACK (nonce, version).
    in_flight: [Option<(String, String)>; 4],
    /// Per type: the last nonce sent.
    last_nonce: [Option<String>; 4],
    /// Per type: every version the client NACKed.
    rejected: [BTreeSet<String>; 4],
    /// Per type: the subscription (wildcard, names), once requested.
    subscription: [Option<(bool, BTreeSet<String>)>; 4],
}

impl Model {
    fn nonce(&self, ty: Option<ResourceType>, choice: &NonceChoice) -> String {
        match choice {
            NonceChoice::Empty => String::new(),
            NonceChoice::Last => ty
                .and_then(|t| self.last_nonce[t.index()].clone())
                .unwrap_or_default(),
            NonceChoice::Earlier(i) => {
                if self.nonces.is_empty() {
                    String::new()
                } else {
                    self.nonces[usize::from(*i) % self.nonces.len()].clone()
                }
            }
            NonceChoice::Other(s) => s.clone(),
        }
    }

    /// Records the request's reply to the response in flight, if it
    /// answers it: the xDS rule for ACK and NACK.
    fn answer(&mut self, ty: ResourceType, nonce: &str, nack: Option<&str>, out: &Output) {
        let Some((in_flight, version)) = self.in_flight[ty.index()].clone() else {
            return;
        };
        if nonce != in_flight {
            return;
        }
        self.in_flight[ty.index()] = None;
        match nack {
            Some(message) => {
                let want = StreamEvent::Nacked {
                    ty,
                    version: version.clone(),
                    message: message.to_owned(),
                };
                assert!(out.events.contains(&want), "NACK not recorded: {out:?}");
                self.rejected[ty.index()].insert(version);
            }
            None => {
                let want = StreamEvent::Acked { ty, version };
                assert!(out.events.contains(&want), "ACK not recorded: {out:?}");
            }
        }
    }

    /// Checks the responses of one input against their `Sent` events and
    /// the rules above, and records them.
    fn sent(&mut self, out: &Output) {
        assert!(
            out.responses.len() <= ResourceType::ALL.len(),
            "more than one response per type for one input: {out:?}"
        );
        let sent: Vec<_> = out
            .events
            .iter()
            .filter_map(|e| match e {
                StreamEvent::Sent {
                    ty, version, nonce, ..
                } => Some((*ty, version, nonce)),
                _ => None,
            })
            .collect();
        assert_eq!(sent.len(), out.responses.len(), "one Sent per response");
        for ((ty, version, nonce), response) in sent.into_iter().zip(&out.responses) {
            assert_eq!(ty, response.ty);
            assert!(
                self.in_flight[ty.index()].is_none(),
                "a second {ty} response while one waits for its ACK"
            );
            assert!(
                !self.rejected[ty.index()].contains(version),
                "{ty} version {version:?} was NACKed on this stream and sent again"
            );
            assert!(!nonce.is_empty(), "empty nonce");
            assert!(!self.nonces.contains(nonce), "nonce {nonce:?} reused");
            self.nonces.push(nonce.clone());
            self.last_nonce[ty.index()] = Some(nonce.clone());
            self.in_flight[ty.index()] = Some((nonce.clone(), version.clone()));
        }
    }

    /// Whether the client's subscription to `ty` covers `name`.
    fn covers(&self, ty: ResourceType, name: &str) -> bool {
        self.subscription[ty.index()]
            .as_ref()
            .is_some_and(|(wildcard, names)| *wildcard || names.contains(name))
    }
}

fn stream_kind(single: Option<u8>) -> StreamKind {
    match single {
        None => StreamKind::Aggregated,
        Some(i) => StreamKind::Single(resource_type(i)),
    }
}

/// The type a request is for, as the stream must read it, or `None` if it
/// must be refused.
fn request_type(kind: StreamKind, url: &str) -> Option<ResourceType> {
    match kind {
        StreamKind::Single(t) if url.is_empty() || url == t.type_url() => Some(t),
        StreamKind::Single(_) => None,
        StreamKind::Aggregated => ResourceType::from_type_url(url),
    }
}

/// Whether a stream whose first accepted node was `first` must refuse a
/// request carrying `node`.
fn refuses_node(first: Option<&Node>, node: Option<&Node>) -> bool {
    match (first, node) {
        (None, None) => true,
        (None, Some(n)) => n.id.is_empty(),
        (Some(f), Some(n)) => !n.id.is_empty() && n.id != f.id,
        (Some(_), None) => false,
    }
}

/// The resource count of the `Sent` event for `nonce` in `out`.
fn sent_count(out: &Output, nonce: &str) -> usize {
    out.events
        .iter()
        .find_map(|e| match e {
            StreamEvent::Sent {
                nonce: n,
                resources,
                ..
            } if n == nonce => Some(*resources),
            _ => None,
        })
        .expect("every response has its Sent event")
}

/// The name of an encoded SotW resource (each of the four types has its
/// name in field 1, but decoding the real message also checks the bytes).
fn sotw_resource_name(ty: ResourceType, value: &[u8]) -> String {
    match ty {
        ResourceType::Cluster => Cluster::decode(value).expect("cluster").name,
        ResourceType::Endpoint => {
            ClusterLoadAssignment::decode(value)
                .expect("assignment")
                .cluster_name
        }
        ResourceType::Listener => Listener::decode(value).expect("listener").name,
        ResourceType::Route => RouteConfiguration::decode(value).expect("route").name,
    }
}

/// State-of-the-world stream: see the file's docs for what it checks.
pub(crate) fn xds_sotw(data: &[u8]) {
    let Ok(script) = Script::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let kind = stream_kind(script.single);
    let mut stream = SotwStream::new(kind);
    let mut seq = 1;
    let mut snap = publish(seq, 0, None);
    let mut model = Model::default();
    let mut first_node: Option<Node> = None;
    for step in script.steps.iter().take(MAX_STEPS) {
        let out = match step {
            Step::Publish(v) => {
                seq += 1;
                snap = publish(seq, *v, Some(&snap));
                stream.on_snapshot(&snap)
            }
            Step::Request(r) => {
                let url = r.ty.url();
                let ty = request_type(kind, &url);
                let req = DiscoveryRequest {
                    node: r.node.node(),
                    type_url: url,
                    resource_names: r.names.iter().map(NameChoice::name).collect(),
                    response_nonce: model.nonce(ty, &r.nonce),
                    error_detail: r.nack.as_ref().map(|m| rpc::Status {
                        code: 3,
                        message: m.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let refused = ty.is_none() || refuses_node(first_node.as_ref(), req.node.as_ref());
                let result = stream.on_request(&req, &snap);
                let (Some(ty), false) = (ty, refused) else {
                    assert!(result.is_err(), "should be refused: {req:?}");
                    // The server closes the stream on a protocol error.
                    return;
                };
                let out = result.expect("a valid request is accepted");
                if first_node.is_none() {
                    first_node = req.node.clone();
                }
                model.answer(ty, &req.response_nonce, r.nack.as_deref(), &out);
                // The xDS rule for SotW subscriptions: the names of the
                // latest request; `*` or an empty first request (legacy)
                // is the wildcard, which stays while lists stay empty.
                let names: BTreeSet<String> = req
                    .resource_names
                    .iter()
                    .filter(|n| *n != "*")
                    .cloned()
                    .collect();
                let sub = &mut model.subscription[ty.index()];
                let wildcard = if req.resource_names.is_empty() {
                    sub.as_ref().is_none_or(|(w, n)| *w && n.is_empty())
                } else {
                    req.resource_names.iter().any(|n| n == "*")
                };
                *sub = Some((wildcard, names));
                out
            }
        };
        model.sent(&out);
        for response in &out.responses {
            let decoded =
                DiscoveryResponse::decode(response.message.to_bytes()).expect("a response decodes");
            let ty = response.ty;
            assert_eq!(decoded.type_url, ty.type_url());
            assert_eq!(
                model.in_flight[ty.index()].as_ref().map(|(n, v)| (n, v)),
                Some((&decoded.nonce, &decoded.version_info)),
                "the response is the one its Sent event describes"
            );
            assert_eq!(
                sent_count(&out, &decoded.nonce),
                decoded.resources.len(),
                "the Sent event counts what the response carries"
            );
            for any in &decoded.resources {
                assert_eq!(any.type_url, ty.type_url());
                let name = sotw_resource_name(ty, &any.value);
                assert!(
                    model.covers(ty, &name),
                    "{ty} {name:?} sent to a stream not subscribed to it"
                );
            }
        }
    }
}

/// Incremental stream: see the file's docs for what it checks.
pub(crate) fn xds_delta(data: &[u8]) {
    let Ok(script) = Script::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    let kind = stream_kind(script.single);
    let mut stream = DeltaStream::new(kind);
    let mut seq = 1;
    let mut snap = publish(seq, 0, None);
    let mut model = Model::default();
    let mut first_node: Option<Node> = None;
    for step in script.steps.iter().take(MAX_STEPS) {
        let out = match step {
            Step::Publish(v) => {
                seq += 1;
                snap = publish(seq, *v, Some(&snap));
                stream.on_snapshot(&snap)
            }
            Step::Request(r) => {
                let url = r.ty.url();
                let ty = request_type(kind, &url);
                let req = DeltaDiscoveryRequest {
                    node: r.node.node(),
                    type_url: url,
                    resource_names_subscribe: r.names.iter().map(NameChoice::name).collect(),
                    resource_names_unsubscribe: r
                        .unsubscribe
                        .iter()
                        .map(NameChoice::name)
                        .collect(),
                    initial_resource_versions: r
                        .initial
                        .iter()
                        .map(|(n, v)| (n.name(), v.clone()))
                        .collect::<HashMap<_, _>>(),
                    response_nonce: model.nonce(ty, &r.nonce),
                    error_detail: r.nack.as_ref().map(|m| rpc::Status {
                        code: 3,
                        message: m.clone(),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let refused = ty.is_none() || refuses_node(first_node.as_ref(), req.node.as_ref());
                let result = stream.on_request(&req, &snap);
                let (Some(ty), false) = (ty, refused) else {
                    assert!(result.is_err(), "should be refused: {req:?}");
                    return;
                };
                let out = result.expect("a valid request is accepted");
                if first_node.is_none() {
                    first_node = req.node.clone();
                }
                model.answer(ty, &req.response_nonce, r.nack.as_deref(), &out);
                // The xDS rule for delta subscriptions: an empty first
                // subscribe list is the legacy wildcard; then names (and
                // `*`) are added and removed.
                let sub = model.subscription[ty.index()].get_or_insert_with(|| {
                    (req.resource_names_subscribe.is_empty(), BTreeSet::new())
                });
                for n in &req.resource_names_subscribe {
                    if n == "*" {
                        sub.0 = true;
                    } else {
                        sub.1.insert(n.clone());
                    }
                }
                for n in &req.resource_names_unsubscribe {
                    if n == "*" {
                        sub.0 = false;
                    } else {
                        sub.1.remove(n);
                    }
                }
                out
            }
        };
        model.sent(&out);
        let node = first_node.as_ref().map_or("", |n| n.cluster.as_str());
        for response in &out.responses {
            let decoded = DeltaDiscoveryResponse::decode(response.message.to_bytes())
                .expect("a response decodes");
            let ty = response.ty;
            assert_eq!(decoded.type_url, ty.type_url());
            assert_eq!(
                model.in_flight[ty.index()].as_ref().map(|(n, v)| (n, v)),
                Some((&decoded.nonce, &decoded.system_version_info)),
                "the response is the one its Sent event describes"
            );
            assert_eq!(
                sent_count(&out, &decoded.nonce),
                decoded.resources.len(),
                "the Sent event counts what the response carries"
            );
            let served = snap.group(node).of(ty);
            for r in &decoded.resources {
                assert!(
                    model.covers(ty, &r.name),
                    "{ty} {:?} sent to a stream not subscribed to it",
                    r.name
                );
                let current = served.get(&r.name).expect("only served resources are sent");
                assert_eq!(r.version, current.version(), "{ty} {:?}", r.name);
            }
            for name in &decoded.removed_resources {
                assert!(
                    served.get(name).is_none(),
                    "{ty} {name:?} is served but was sent as removed"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Config loader
// ---------------------------------------------------------------------------

/// The config loader: any text ends in a config that becomes a snapshot,
/// or in diagnostics that point into the text.
pub(crate) fn config_yaml(data: &[u8]) {
    // The loader reads files as UTF-8 text; other bytes never reach it.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, "fuzz.yaml") {
        Ok(config) => {
            let input = translate(&config, &Weights::initial(&config));
            if let Err(e) = Snapshot::build("1", &input, None) {
                panic!("a valid config must translate into a valid snapshot: {e}");
            }
        }
        Err(diags) => {
            assert!(!diags.is_empty(), "an error without diagnostics");
            // YAML line breaks are CR LF, CR or LF; a position may sit
            // just past the last one (end of input).
            let lines = text.replace("\r\n", "\n").split(['\n', '\r']).count();
            let columns = text.chars().count() + 1;
            for d in diags.iter() {
                assert_eq!(d.file, "fuzz.yaml");
                assert!(!d.message.is_empty(), "empty message: {d:?}");
                assert!(
                    (1..=lines).contains(&d.line),
                    "line {} outside 1..={lines}: {d}",
                    d.line
                );
                assert!(
                    (1..=columns).contains(&d.column),
                    "column {} outside 1..={columns}: {d}",
                    d.column
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------
// State file loader
// ---------------------------------------------------------------------------

/// One state directory and runtime per process: the store locks its
/// directory, and every input replaces `state.json` in it.
struct StateFixture {
    _dir: tempfile::TempDir,
    store: FileStore,
    runtime: tokio::runtime::Runtime,
}

fn state_fixture() -> &'static StateFixture {
    static FIXTURE: OnceLock<StateFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store = FileStore::open(dir.path()).expect("open the state directory");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        StateFixture {
            _dir: dir,
            store,
            runtime,
        }
    })
}

/// The state file loader: any `state.json` loads as a state that saves and
/// loads back the same (or, at the largest revision, refuses to save rather
/// than wrap around), or is refused as unreadable with a typed error.
pub(crate) fn state_file(data: &[u8]) {
    let f = state_fixture();
    std::fs::write(f.store.state_path(), data).expect("write state.json");
    match f.runtime.block_on(f.store.load()) {
        Ok(Some(stored)) => {
            assert_ne!(stored.revision.0, 0, "revision 0 is never stored");
            let next = match f
                .runtime
                .block_on(f.store.save(&stored.state, stored.revision))
            {
                Ok(next) => next,
                // Never wrapped around to an unreadable revision 0.
                Err(StateError::Exhausted { .. }) if stored.revision.0 == u64::MAX => return,
                Err(e) => panic!("a loaded state saves: {e}"),
            };
            assert!(next > stored.revision, "revisions only grow");
            let again = f
                .runtime
                .block_on(f.store.load())
                .expect("a saved state loads")
                .expect("and is there");
            assert_eq!(again.revision, next);
            assert_eq!(again.state, stored.state, "the state survives a save");
        }
        Ok(None) => panic!("state.json exists but nothing was loaded"),
        Err(
            e @ (StateError::Io { .. } | StateError::Conflict { .. } | StateError::Locked { .. }),
        ) => {
            panic!("a readable file is refused for its content, not with {e:?}")
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

// ---------------------------------------------------------------------------
// Admin requests
// ---------------------------------------------------------------------------

/// A service as the controller would show it to the planner.
struct ServiceState {
    fleets: Vec<&'static str>,
    empty: BTreeSet<&'static str>,
    split: Split,
    rollback_to: Option<Split>,
    retired: BTreeSet<String>,
}

/// Two services in states that reach every branch of the planner: `web`
/// on blue with green to roll back to; `api` split between blue and green
/// with a retired third fleet and nothing to roll back to.
fn services() -> &'static BTreeMap<&'static str, ServiceState> {
    static SERVICES: OnceLock<BTreeMap<&'static str, ServiceState>> = OnceLock::new();
    SERVICES.get_or_init(|| {
        let split =
            |w: &[(&str, u32)]| -> Split { w.iter().map(|(f, w)| ((*f).to_owned(), *w)).collect() };
        BTreeMap::from([
            (
                "web",
                ServiceState {
                    fleets: vec!["blue", "green"],
                    empty: BTreeSet::new(),
                    split: split(&[("blue", 100), ("green", 0)]),
                    rollback_to: Some(split(&[("blue", 0), ("green", 100)])),
                    retired: BTreeSet::new(),
                },
            ),
            (
                "api",
                ServiceState {
                    fleets: vec!["blue", "canary", "green"],
                    empty: BTreeSet::from(["canary"]),
                    split: split(&[("blue", 50), ("canary", 0), ("green", 50)]),
                    rollback_to: None,
                    retired: BTreeSet::from(["canary".to_owned()]),
                },
            ),
        ])
    })
}

/// The admin request conversion: the first byte picks the request type, the
/// rest is its protobuf encoding, as it arrives over gRPC.
pub(crate) fn admin_convert(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let op = match which % 4 {
        0 => pb::FlipRequest::decode(body).map(convert::flip),
        1 => pb::ShiftRequest::decode(body).map(convert::shift),
        2 => pb::RollbackRequest::decode(body).map(convert::rollback),
        _ => pb::RetireRequest::decode(body).map(convert::retire),
    };
    // Bytes that do not decode are refused by tonic's codec before teal
    // sees them.
    let Ok(op) = op else {
        return;
    };
    let op = match op {
        Ok(op) => op,
        Err(e) => {
            let code = tonic::Status::from(e.clone()).code();
            assert_eq!(code, tonic::Code::InvalidArgument, "{e}");
            return;
        }
    };
    if let Operation::Flip { timeout, .. }
    | Operation::Shift { timeout, .. }
    | Operation::Rollback { timeout, .. } = &op
    {
        assert!(!timeout.is_zero(), "a zero timeout means the default");
    }
    let Some(s) = services().get(op.service()) else {
        // The controller refuses unknown services before planning.
        return;
    };
    let view = ServiceView {
        name: op.service(),
        fleets: s.fleets.clone(),
        empty: s.empty.clone(),
        split: &s.split,
        rollback_to: s.rollback_to.as_ref(),
        retired: &s.retired,
        has_checks: true,
        analysis: None,
    };
    let plan = match plan(&op, &view) {
        Ok(plan) => plan,
        Err(e) => {
            let code = tonic::Status::from(e.clone()).code();
            assert!(
                matches!(
                    code,
                    tonic::Code::InvalidArgument
                        | tonic::Code::NotFound
                        | tonic::Code::FailedPrecondition
                ),
                "a bad request is the client's fault, not {code:?}: {e}"
            );
            assert!(!matches!(
                e,
                RolloutError::Store(_) | RolloutError::Busy { .. }
            ));
            return;
        }
    };
    assert!(!plan.steps.is_empty(), "a plan does something");
    for step in &plan.steps {
        let fleets: Vec<&str> = step.split.keys().map(String::as_str).collect();
        assert_eq!(fleets, view.fleets, "every step weighs every fleet");
        let sum: u64 = step.split.values().map(|w| u64::from(*w)).sum();
        assert_eq!(sum, u64::from(Weights::TOTAL), "{step:?}");
        for f in &view.empty {
            assert_eq!(
                step.split.get(*f),
                Some(&0),
                "empty fleet {f:?} gets traffic"
            );
        }
        for f in &step.retired {
            assert!(view.fleets.contains(&f.as_str()), "{f:?} is no fleet");
            assert_eq!(
                step.split.get(f),
                Some(&0),
                "retired fleet {f:?} gets traffic: {step:?}"
            );
        }
    }
    let steps = plan.steps.len();
    let origin = Origin {
        id: 1,
        actor: "fuzz".into(),
        started: std::time::SystemTime::UNIX_EPOCH,
    };
    let rollback_to = view.rollback_to.cloned();
    let (rollout, _actions) = Rollout::start(
        origin,
        &op,
        plan,
        view.current(),
        rollback_to,
        Instant::now(),
    );
    let progress = convert::progress(&rollout.progress());
    assert_eq!(progress.service, op.service());
    assert_eq!(usize::try_from(progress.steps).ok(), Some(steps));
    let bytes = progress.encode_to_vec();
    assert_eq!(
        pb::Progress::decode(bytes.as_slice()).expect("progress decodes"),
        progress
    );
}
