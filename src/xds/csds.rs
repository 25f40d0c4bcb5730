//! CSDS: `envoy.service.status.v3.ClientStatusDiscoveryService`, teal's
//! view of every connected proxy in the form mesh tooling reads.
//!
//! An answer is built from two things teal keeps anyway: the
//! [`ProxyRegistry`] (per stream and type, the version sent, the version
//! ACKed, the last NACK) and the snapshot being served (the resources of
//! each group). Per proxy (one `node.id`, over all its streams) it holds a
//! `ClientConfig` with the proxy's `node` and, per resource type its
//! streams carry, one `GenericXdsConfig` per resource teal sent it:
//!
//! | registry state of the type | `config_status` | `client_status` |
//! |---|---|---|
//! | nothing sent or ACKed | `NOT_SENT` | `UNKNOWN` |
//! | the last version sent was NACKed | `ERROR` | `NACKED`, with `error_state` |
//! | the version sent is ACKed (or, on a delta stream that was sent nothing new, the group's current version is) | `SYNCED` | `ACKED` |
//! | sent, not yet ACKed | `STALE` | `REQUESTED` |
//!
//! `error_state` carries the NACK: the rejected version, the proxy's
//! message (as kept, see `--max-nack-bytes`) and when it came; it stays
//! until the type is SYNCED again.
//!
//! The resources come from the snapshot served now. When the version a
//! proxy was sent is no longer the group's current one (a newer version is
//! waiting to be sent), teal no longer holds that version's contents: the
//! type is reported as one entry with its version and state and no
//! `xds_config`. A type with no resources is reported the same way, so its
//! state shows. A proxy that subscribed to some resources by name (EDS on
//! Envoy, everything on proxyless gRPC) is listed with every resource of
//! the type in its group.
//!
//! `node_matchers` select proxies (any matcher may match; none selects
//! all). teal supports, in one `NodeMatcher` (all of whose parts must
//! match):
//!
//! - `node_id`: a `StringMatcher` with `exact`, `prefix`, `suffix` or
//!   `contains`, and `ignore_case`;
//! - `node_metadatas`: only a `StructMatcher` whose `path` is the single
//!   key `node.cluster`, matching the proxy group by a `string_match` as
//!   above. teal keeps no other metadata of a proxy.
//!
//! Anything else (`safe_regex`, other metadata paths, other value
//! matchers) is refused with `INVALID_ARGUMENT` rather than ignored, so a
//! filter never silently selects more than asked.
//!
//! # Who sees what
//!
//! On the xDS port, a CSDS client sees only the proxies of the groups its
//! own connection's identity could join ([`IdentityPolicy::admits`]): the
//! groups that list no `identities`, and those whose `identities` admit
//! its client certificate. A proxy's certificate thus shows it its own
//! group and nothing of the others; a certificate no group admits, or a
//! client without one, sees only the groups open to anyone. Without
//! `identities` in the config every group is open, and the port shows
//! every proxy to whoever reaches it. The admin port's CSDS is not
//! filtered: reaching it is the operators' privilege (loopback, or its
//! own TLS and client CA).
//!
//! # Bounds
//!
//! A request may hold at most [`CsdsLimits::max_matchers`] matchers and
//! [`CsdsLimits::max_request_bytes`] bytes; an answer may be at most
//! [`CsdsLimits::max_response_bytes`] (narrow it with matchers or
//! `exclude_resource_contents`); at most [`CsdsLimits::max_concurrent`]
//! answers are built at once, the rest wait their turn. Past a limit the
//! call (or stream) ends with `RESOURCE_EXHAUSTED` naming it.
//!
//! An answer built is held until its client has read it, which a client
//! can put off for ever (an HTTP/2 window of 0, while it answers pings).
//! So the bytes of answers built and not yet sent whole are counted, per
//! connection ([`CsdsLimits::max_unread_bytes_per_connection`]) and in all
//! ([`CsdsLimits::max_unread_bytes`]): an answer that would go past either
//! is dropped and its call ends with `RESOURCE_EXHAUSTED` naming the
//! limit. An answer still unread after [`CsdsLimits::unread_timeout`]
//! closes its connection, which frees everything it holds.
//!
//! An answer is built from a copy of the registry ([`ProxyRegistry::proxies`])
//! and the snapshot's `Arc`, on a blocking thread: no lock is held while
//! it is built, and a large answer does not stall the xDS streams.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::admin::v3::{ClientResourceStatus, UpdateFailureState};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::status::v3::client_config::GenericXdsConfig;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_server::{
    ClientStatusDiscoveryService, ClientStatusDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::status::v3::{
    ClientConfig, ClientStatusRequest, ClientStatusResponse, ConfigStatus,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    NodeMatcher, StringMatcher, string_matcher, struct_matcher, value_matcher,
};
use envoy_types::pb::google::protobuf::{Any, Timestamp};
use prost::Message;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::server::NamedService;
use tonic::{Request, Response, Status, Streaming};

use crate::shutdown::Shutdown;
use crate::transport::identity::{IdentityGate, IdentityPolicy, PeerIdentity};
use crate::transport::tls::ConnInfo;
use crate::xds::resources::ResourceType;
use crate::xds::snapshot::{Snapshot, TypeSnapshot};
use crate::xds::snapshot_store::SnapshotReader;

use super::limits::{Limit, OverLimit};
use super::protocol::StreamKind;
use super::status::{ProxyRegistry, ProxyStatus, TypeStatus};

/// The metadata path that `node_metadatas` may name: it matches the proxy
/// group (`node.cluster`), which teal keeps, where real metadata is not.
pub(crate) const GROUP_KEY: &str = "node.cluster";

/// What one CSDS request may ask of teal. Each bound has a `teal serve`
/// flag and a row in the "Limits" table (docs/limits.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CsdsLimits {
    /// Largest request message, in bytes. Default 64 KiB: a request is a
    /// few matchers of a node id or a group, far under a kilobyte.
    pub max_request_bytes: usize,
    /// Most `node_matchers` in one request. Default 64: a tool asks for
    /// one proxy, one group or a handful; each matcher is tried against
    /// every proxy, so this bounds the work per proxy.
    pub max_matchers: usize,
    /// Largest answer, in bytes. Default 64 MiB, the xDS port's largest
    /// response: thousands of proxies with their resources, while a
    /// request cannot make teal build an unbounded message.
    pub max_response_bytes: usize,
    /// Most answers built at once, over both ports. Default 4: each can
    /// take up to `max_response_bytes` of memory and a core while built;
    /// further requests wait for a turn.
    pub max_concurrent: usize,
    /// Most bytes of answers built and not yet read by their clients, over
    /// both ports. Default 256 MiB: four answers at the largest size.
    pub max_unread_bytes: usize,
    /// Most bytes of answers built and not yet read on one connection.
    /// Default 64 MiB: one answer at the largest size.
    pub max_unread_bytes_per_connection: usize,
    /// How long an answer may stay unread before its connection is
    /// closed. Default 30 s: a client that asked reads its answer at once.
    pub unread_timeout: Duration,
}

impl Default for CsdsLimits {
    fn default() -> Self {
        CsdsLimits {
            max_request_bytes: 64 * 1024,
            max_matchers: 64,
            max_response_bytes: 64 * 1024 * 1024,
            max_concurrent: 4,
            max_unread_bytes: 256 * 1024 * 1024,
            max_unread_bytes_per_connection: 64 * 1024 * 1024,
            unread_timeout: Duration::from_secs(30),
        }
    }
}

/// Why a CSDS request is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum CsdsError {
    /// The request (or its answer) is over a limit.
    #[error(transparent)]
    OverLimit(#[from] OverLimit),
    /// A matcher teal cannot evaluate; see the module docs for what is
    /// supported.
    #[error("unsupported node matcher: {0}")]
    Unsupported(String),
}

impl From<CsdsError> for Status {
    fn from(e: CsdsError) -> Status {
        match e {
            CsdsError::OverLimit(_) => Status::resource_exhausted(e.to_string()),
            CsdsError::Unsupported(_) => Status::invalid_argument(e.to_string()),
        }
    }
}

/// How a string is compared.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
}

/// A checked `StringMatcher`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct StrMatch {
    pattern: Pattern,
    /// ASCII case-insensitive, as Envoy's `ignore_case`.
    ignore_case: bool,
}

impl StrMatch {
    fn parse(m: &StringMatcher, what: &str) -> Result<StrMatch, CsdsError> {
        use string_matcher::MatchPattern as P;
        let lower = |s: &String| {
            if m.ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.clone()
            }
        };
        let pattern = match &m.match_pattern {
            Some(P::Exact(s)) => Pattern::Exact(lower(s)),
            Some(P::Prefix(s)) => Pattern::Prefix(lower(s)),
            Some(P::Suffix(s)) => Pattern::Suffix(lower(s)),
            Some(P::Contains(s)) => Pattern::Contains(lower(s)),
            Some(P::SafeRegex(_)) => {
                return Err(CsdsError::Unsupported(format!(
                    "{what}: safe_regex (use exact, prefix, suffix or contains)"
                )));
            }
            Some(P::Custom(_)) => {
                return Err(CsdsError::Unsupported(format!(
                    "{what}: custom (use exact, prefix, suffix or contains)"
                )));
            }
            None => {
                return Err(CsdsError::Unsupported(format!(
                    "{what}: a string matcher with no pattern"
                )));
            }
        };
        Ok(StrMatch {
            pattern,
            ignore_case: m.ignore_case,
        })
    }

    fn matches(&self, value: &str) -> bool {
        let lowered;
        let value = if self.ignore_case {
            lowered = value.to_ascii_lowercase();
            lowered.as_str()
        } else {
            value
        };
        match &self.pattern {
            Pattern::Exact(s) => value == s,
            Pattern::Prefix(s) => value.starts_with(s.as_str()),
            Pattern::Suffix(s) => value.ends_with(s.as_str()),
            Pattern::Contains(s) => value.contains(s.as_str()),
        }
    }
}

/// One checked `NodeMatcher`: every part must match.
#[derive(Clone, Debug, PartialEq, Eq)]
struct NodeFilter {
    id: Option<StrMatch>,
    groups: Vec<StrMatch>,
}

impl NodeFilter {
    fn parse(m: &NodeMatcher, i: usize) -> Result<NodeFilter, CsdsError> {
        let id = m
            .node_id
            .as_ref()
            .map(|s| StrMatch::parse(s, &format!("node_matchers[{i}].node_id")))
            .transpose()?;
        let groups = m
            .node_metadatas
            .iter()
            .enumerate()
            .map(|(j, s)| {
                let what = format!("node_matchers[{i}].node_metadatas[{j}]");
                let key = match s.path.as_slice() {
                    [one] => one
                        .segment
                        .as_ref()
                        .map(|struct_matcher::path_segment::Segment::Key(k)| k.as_str()),
                    _ => None,
                };
                if key != Some(GROUP_KEY) {
                    return Err(CsdsError::Unsupported(format!(
                        "{what}: only the path [{GROUP_KEY:?}] (the proxy group) can be matched"
                    )));
                }
                match s.value.as_ref().and_then(|v| v.match_pattern.as_ref()) {
                    Some(value_matcher::MatchPattern::StringMatch(sm)) => {
                        StrMatch::parse(sm, &format!("{what}.value"))
                    }
                    _ => Err(CsdsError::Unsupported(format!(
                        "{what}: the value must be a string_match"
                    ))),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(NodeFilter { id, groups })
    }

    fn matches(&self, id: &str, group: &str) -> bool {
        self.id.as_ref().is_none_or(|m| m.matches(id))
            && self.groups.iter().all(|m| m.matches(group))
    }
}

/// Which proxies a request selects: those any filter matches, or all;
/// and of those only the groups the asker may see, when it is gated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Selector {
    filters: Vec<NodeFilter>,
    /// The identity policy in force and the asker's identity: only the
    /// groups that policy would let it join are visible.
    visible_to: Option<(Arc<IdentityPolicy>, PeerIdentity)>,
}

impl Selector {
    /// Checks a request's `node_matchers` whole: every one must be
    /// supported and there must be at most `max_matchers`.
    pub(crate) fn parse(
        matchers: &[NodeMatcher],
        max_matchers: usize,
    ) -> Result<Selector, CsdsError> {
        OverLimit::check(
            Limit::CsdsMatchers,
            || "the request's node_matchers".to_owned(),
            matchers.len(),
            max_matchers,
        )?;
        let filters = matchers
            .iter()
            .enumerate()
            .map(|(i, m)| NodeFilter::parse(m, i))
            .collect::<Result<_, _>>()?;
        Ok(Selector {
            filters,
            visible_to: None,
        })
    }

    /// Narrows the selection to the groups `policy` lets `identity` join.
    pub(crate) fn visible_to(
        mut self,
        policy: Arc<IdentityPolicy>,
        identity: PeerIdentity,
    ) -> Selector {
        self.visible_to = Some((policy, identity));
        self
    }

    /// Whether the proxy with node id `id` in `group` is selected.
    pub(crate) fn matches(&self, id: &str, group: &str) -> bool {
        let visible = self
            .visible_to
            .as_ref()
            .is_none_or(|(policy, identity)| policy.admits(group, identity));
        visible && (self.filters.is_empty() || self.filters.iter().any(|f| f.matches(id, group)))
    }
}

fn timestamp(t: SystemTime) -> Timestamp {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: i64::try_from(since.as_secs()).unwrap_or(i64::MAX),
        // Below one billion, so it fits.
        nanos: i32::try_from(since.subsec_nanos()).unwrap_or(0),
    }
}

/// The CSDS state of one type, from the registry, and the version it is
/// reported at.
fn state_of<'a>(
    t: &'a TypeStatus,
    current: &str,
) -> (ConfigStatus, ClientResourceStatus, Option<&'a str>) {
    let acked = t.acked.as_deref();
    let sent = t.sent.as_deref();
    if sent.is_none() && acked.is_none() {
        (ConfigStatus::NotSent, ClientResourceStatus::Unknown, None)
    } else if t.last_was_nacked() {
        (ConfigStatus::Error, ClientResourceStatus::Nacked, sent)
    } else if acked.is_some() && (acked == sent || sent.is_none() || acked == Some(current)) {
        // `acked == current` with an older `sent`: a delta stream that
        // holds everything of the current version reports it applied
        // without being sent it.
        (ConfigStatus::Synced, ClientResourceStatus::Acked, acked)
    } else {
        (ConfigStatus::Stale, ClientResourceStatus::Requested, sent)
    }
}

/// Whether `version` is the content of `ts`: its version, or its version
/// with clusters kept for make-before-break (`{version}+keep.{digest}`),
/// whose kept clusters are no longer in the snapshot and are not listed.
fn is_content_of(version: &str, ts: &TypeSnapshot) -> bool {
    version
        .strip_prefix(ts.version())
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("+keep."))
}

/// The `GenericXdsConfig`s of one type of one proxy.
fn type_configs(
    ty: ResourceType,
    t: &TypeStatus,
    ts: &TypeSnapshot,
    contents: bool,
    out: &mut Vec<GenericXdsConfig>,
) {
    let (status, client, version) = state_of(t, ts.version());
    let error_state = match &t.nack {
        Some(nack) if status != ConfigStatus::Synced => Some(UpdateFailureState {
            failed_configuration: None,
            last_update_attempt: Some(timestamp(nack.at)),
            details: nack.message.clone(),
            version_info: nack.version.clone(),
        }),
        _ => None,
    };
    let last_updated = match status {
        ConfigStatus::Synced => t.acked_at.or(t.sent_at),
        _ => t.sent_at,
    }
    .map(timestamp);
    let entry = |name: String, xds_config: Option<Any>| GenericXdsConfig {
        type_url: ty.type_url().to_owned(),
        name,
        version_info: version.unwrap_or_default().to_owned(),
        xds_config,
        last_updated,
        config_status: status as i32,
        client_status: client as i32,
        error_state: error_state.clone(),
        is_static_resource: false,
    };
    let resources = ts.resources();
    if version.is_none_or(|v| !is_content_of(v, ts)) || resources.is_empty() {
        out.push(entry(String::new(), None));
        return;
    }
    for (name, r) in resources {
        // The bytes were encoded from an `Any` by teal itself; a decode
        // failure would be a bug, and the entry is then listed without
        // its contents rather than failing the whole answer.
        let any = contents
            .then(|| Any::decode(r.any_bytes().clone()).ok())
            .flatten();
        out.push(entry(name.clone(), any));
    }
}

/// Whether a stream of `kind` carries `ty`.
fn carries(kind: StreamKind, ty: ResourceType) -> bool {
    match kind {
        StreamKind::Aggregated => true,
        StreamKind::Single(t) => t == ty,
    }
}

/// One proxy's `ClientConfig` from its streams (all with the same node
/// id, oldest first).
fn client_config(streams: &[&ProxyStatus], snapshot: &Snapshot, contents: bool) -> ClientConfig {
    // The newest stream speaks for the proxy: after a reconnect, the old
    // one is on its way out.
    let newest = streams.last();
    let info = newest.and_then(|p| p.node.as_ref());
    let group = info.map(|n| n.cluster.as_str()).unwrap_or_default();
    let node = info.map(|n| Node {
        id: n.id.clone(),
        cluster: n.cluster.clone(),
        user_agent_name: n.user_agent.clone(),
        ..Default::default()
    });
    let gs = snapshot.group(group);
    let mut configs = Vec::new();
    for ty in ResourceType::ALL {
        let carrying = streams.iter().rev().filter(|p| carries(p.kind, ty));
        let mut best: Option<&TypeStatus> = None;
        for p in carrying {
            let t = p.of(ty);
            if t.sent.is_some() || t.acked.is_some() {
                best = Some(t);
                break;
            }
            best.get_or_insert(t);
        }
        if let Some(t) = best {
            type_configs(ty, t, gs.of(ty), contents, &mut configs);
        }
    }
    ClientConfig {
        node,
        generic_xds_configs: configs,
        ..Default::default()
    }
}

/// Builds the answer to a request: every selected proxy known by its
/// node (streams that have not said who they are yet are left out), in
/// node id order, with the resources' contents unless `contents` is
/// false. Fails, without building the rest, once the answer grows past
/// `max_bytes`.
pub(crate) fn client_status(
    proxies: &[ProxyStatus],
    snapshot: &Snapshot,
    selector: &Selector,
    contents: bool,
    max_bytes: usize,
) -> Result<ClientStatusResponse, CsdsError> {
    let mut by_node: BTreeMap<&str, Vec<&ProxyStatus>> = BTreeMap::new();
    for p in proxies {
        if let Some(n) = &p.node
            && selector.matches(&n.id, &n.cluster)
        {
            by_node.entry(n.id.as_str()).or_default().push(p);
        }
    }
    let total = by_node.len();
    let mut response = ClientStatusResponse::default();
    let mut bytes = 0usize;
    for streams in by_node.values_mut() {
        streams.sort_by_key(|p| p.stream_id);
        let config = client_config(streams, snapshot, contents);
        // The field's tag and length prefix come on top of the message.
        bytes = bytes.saturating_add(config.encoded_len() + 8);
        OverLimit::check(
            Limit::CsdsResponseBytes,
            || {
                format!(
                    "the answer (at {} of {} proxies; narrow it with node_matchers or \
                     exclude_resource_contents)",
                    response.config.len() + 1,
                    total
                )
            },
            bytes,
            max_bytes,
        )?;
        response.config.push(config);
    }
    Ok(response)
}

/// What both ports' CSDS services share.
#[derive(Debug)]
struct Shared {
    registry: Arc<ProxyRegistry>,
    reader: SnapshotReader,
    limits: CsdsLimits,
    /// Turns to build an answer ([`CsdsLimits::max_concurrent`]).
    turns: Semaphore,
    /// Bytes of answers built and not yet read.
    unread: Arc<Unread>,
    shutdown: Shutdown,
}

/// Bytes of answers built and not yet read, in all and per connection
/// (by the client's address; an answer for a caller without one counts
/// in all only).
#[derive(Debug, Default)]
pub struct Unread {
    state: Mutex<UnreadState>,
}

#[derive(Debug, Default)]
struct UnreadState {
    total: usize,
    per_connection: HashMap<SocketAddr, usize>,
}

impl Unread {
    /// Bytes of answers built and not yet read, in all.
    pub fn total(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, UnreadState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts `bytes` for `conn`, or says which limit they would go past.
    fn reserve(
        self: &Arc<Self>,
        conn: Option<SocketAddr>,
        bytes: usize,
        limits: &CsdsLimits,
    ) -> Result<Held, OverLimit> {
        let mut state = self.lock();
        if let Some(addr) = conn {
            let held = state.per_connection.get(&addr).copied().unwrap_or(0);
            OverLimit::check(
                Limit::CsdsUnreadBytesPerConnection,
                || format!("this connection's unread CSDS answers (with this one, {bytes} bytes)"),
                held.saturating_add(bytes),
                limits.max_unread_bytes_per_connection,
            )?;
        }
        OverLimit::check(
            Limit::CsdsUnreadBytes,
            || format!("all clients' unread CSDS answers (with this one, {bytes} bytes)"),
            state.total.saturating_add(bytes),
            limits.max_unread_bytes,
        )?;
        state.total += bytes;
        if let Some(addr) = conn {
            *state.per_connection.entry(addr).or_default() += bytes;
        }
        Ok(Held {
            unread: self.clone(),
            conn,
            bytes,
            _watchdog: None,
        })
    }
}

/// The bytes of one answer, counted as unread until this drops: when the
/// answer was sent whole, or its call or connection ended.
#[derive(Debug)]
struct Held {
    unread: Arc<Unread>,
    conn: Option<SocketAddr>,
    bytes: usize,
    /// Dropped with this, which tells the watchdog the answer was read.
    _watchdog: Option<oneshot::Sender<()>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut state = self.unread.lock();
        state.total = state.total.saturating_sub(self.bytes);
        if let Some(addr) = self.conn
            && let Some(n) = state.per_connection.get_mut(&addr)
        {
            *n = n.saturating_sub(self.bytes);
            if *n == 0 {
                state.per_connection.remove(&addr);
            }
        }
    }
}

/// A [`Held`] in a response's extensions (which want `Clone`), moved into
/// its body by [`CsdsServer`].
#[derive(Clone, Debug)]
struct HeldAnswer {
    _held: Arc<Held>,
}

/// A response body that holds its answer's count until it is dropped.
struct HeldBody {
    inner: tonic::body::Body,
    _held: HeldAnswer,
}

impl http_body::Body for HeldBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The answers of a `StreamClientStatus` call; each answer's count is
/// held until the next is taken (the previous one has been handed to the
/// connection then) or the call ends.
#[derive(Debug)]
pub struct Answers {
    rx: mpsc::Receiver<(Result<ClientStatusResponse, Status>, Option<Held>)>,
    last: Option<Held>,
}

impl tokio_stream::Stream for Answers {
    type Item = Result<ClientStatusResponse, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match std::task::ready!(this.rx.poll_recv(cx)) {
            Some((answer, held)) => {
                this.last = held;
                Poll::Ready(Some(answer))
            }
            None => {
                this.last = None;
                Poll::Ready(None)
            }
        }
    }
}

/// The CSDS service; clones share the registry, the snapshot store and
/// the turns, so mounting it on both ports bounds both together.
#[derive(Clone, Debug)]
pub struct ClientStatus {
    shared: Arc<Shared>,
    /// On the xDS port: answers show only the groups the asker's identity
    /// may join (see the module docs). `None` on the admin port.
    gate: Option<Arc<IdentityGate>>,
}

impl ClientStatus {
    /// A service answering from `registry` and what `reader` serves.
    pub fn new(
        registry: Arc<ProxyRegistry>,
        reader: SnapshotReader,
        limits: CsdsLimits,
        shutdown: Shutdown,
    ) -> ClientStatus {
        ClientStatus {
            shared: Arc::new(Shared {
                registry,
                reader,
                turns: Semaphore::new(limits.max_concurrent.max(1)),
                unread: Arc::default(),
                limits,
                shutdown,
            }),
            gate: None,
        }
    }

    /// This service, answering each asker with only the groups `gate`'s
    /// policy lets its connection's identity join (for the xDS port).
    pub(crate) fn gated(mut self, gate: Arc<IdentityGate>) -> ClientStatus {
        self.gate = Some(gate);
        self
    }

    /// The service to mount on a tonic server.
    pub(crate) fn into_server(self) -> CsdsServer {
        let max = self.shared.limits.max_request_bytes;
        CsdsServer {
            inner: ClientStatusDiscoveryServiceServer::new(self)
                .max_decoding_message_size(max)
                .max_encoding_message_size(usize::MAX),
            max_request_bytes: max,
        }
    }

    /// Bytes of answers built and not yet read by their clients.
    pub fn unread(&self) -> Arc<Unread> {
        self.shared.unread.clone()
    }

    /// Answers one request of a client of `identity`: checks it whole,
    /// then builds the answer from a copy of the registry on a blocking
    /// thread, once it has a turn.
    #[cfg(test)]
    pub(crate) async fn answer(
        &self,
        request: &ClientStatusRequest,
        identity: &PeerIdentity,
    ) -> Result<ClientStatusResponse, Status> {
        self.answer_held(request, identity, None)
            .await
            .map(|(answer, _)| answer)
    }

    /// [`ClientStatus::answer`], counted as unread for the connection
    /// `conn` until the returned [`Held`] drops; watched, so that the
    /// connection is closed if it is not read within
    /// [`CsdsLimits::unread_timeout`].
    async fn answer_held(
        &self,
        request: &ClientStatusRequest,
        identity: &PeerIdentity,
        conn: Option<&ConnInfo>,
    ) -> Result<(ClientStatusResponse, Held), Status> {
        let s = &self.shared;
        let mut selector = Selector::parse(&request.node_matchers, s.limits.max_matchers)?;
        if let Some(gate) = &self.gate {
            // The policy in force when the request is answered: a reload
            // that revokes an identity narrows its next answer.
            selector = selector.visible_to(gate.policy(), identity.clone());
        }
        let contents = !request.exclude_resource_contents;
        let _turn = s
            .turns
            .acquire()
            .await
            .map_err(|_| Status::unavailable("teal is shutting down"))?;
        let proxies = s.registry.proxies();
        let snapshot = s.reader.peek();
        let max = s.limits.max_response_bytes;
        let built = tokio::task::spawn_blocking(move || {
            client_status(&proxies, &snapshot, &selector, contents, max)
        })
        .await
        .map_err(|e| Status::internal(format!("building the CSDS answer failed: {e}")))?;
        let answer = built?;
        let remote = conn.and_then(|c| c.remote);
        let mut held = s
            .unread
            .reserve(remote, answer.encoded_len(), &s.limits)
            .map_err(CsdsError::from)?;
        if let Some(conn) = conn {
            let (done, read) = oneshot::channel();
            held._watchdog = Some(done);
            let conn = conn.clone();
            let timeout = s.limits.unread_timeout;
            tokio::spawn(async move {
                tokio::select! {
                    // Read whole (or dropped with its call): the sender
                    // went with the `Held`.
                    _ = read => {}
                    () = tokio::time::sleep(timeout) => {
                        tracing::warn!(
                            peer = ?conn.remote,
                            ?timeout,
                            flag = "--csds-unread-timeout",
                            "closing a connection: its client left a CSDS answer unread"
                        );
                        conn.close();
                    }
                }
            });
        }
        Ok((answer, held))
    }
}

/// Responses queued per CSDS stream before teal waits for the client.
const STREAM_QUEUE: usize = 2;

#[tonic::async_trait]
impl ClientStatusDiscoveryService for ClientStatus {
    type StreamClientStatusStream = Answers;

    async fn stream_client_status(
        &self,
        request: Request<Streaming<ClientStatusRequest>>,
    ) -> Result<Response<Self::StreamClientStatusStream>, Status> {
        let identity = identity_of(&request);
        let conn = request.extensions().get::<ConnInfo>().cloned();
        let mut requests = request.into_inner();
        let (tx, rx) = mpsc::channel(STREAM_QUEUE);
        let this = self.clone();
        let max_request_bytes = self.shared.limits.max_request_bytes;
        tokio::spawn(async move {
            let mut shutdown = this.shared.shutdown.clone();
            loop {
                let next = tokio::select! {
                    () = shutdown.wait() => {
                        let _ = tx.send((Err(Status::unavailable("teal is shutting down")), None)).await;
                        return;
                    }
                    next = requests.message() => next,
                };
                let answer = match next {
                    Ok(Some(req)) => this
                        .answer_held(&req, &identity, conn.as_ref())
                        .await
                        .map(|(answer, held)| (answer, Some(held))),
                    Ok(None) => return,
                    Err(status) => Err(request_error(status, max_request_bytes)),
                };
                let failed = answer.is_err();
                let answer = match answer {
                    Ok((answer, held)) => (Ok(answer), held),
                    Err(status) => (Err(status), None),
                };
                // The client left, or this was its last answer.
                if tx.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Answers { rx, last: None }))
    }

    async fn fetch_client_status(
        &self,
        request: Request<ClientStatusRequest>,
    ) -> Result<Response<ClientStatusResponse>, Status> {
        let identity = identity_of(&request);
        let conn = request.extensions().get::<ConnInfo>().cloned();
        let (answer, held) = self
            .answer_held(request.get_ref(), &identity, conn.as_ref())
            .await?;
        let mut response = Response::new(answer);
        response.extensions_mut().insert(HeldAnswer {
            _held: Arc::new(held),
        });
        Ok(response)
    }
}

/// The identity the client certificate of a request's connection proved.
fn identity_of<T>(request: &Request<T>) -> PeerIdentity {
    request
        .extensions()
        .get::<ConnInfo>()
        .map(ConnInfo::identity)
        .unwrap_or(PeerIdentity::Unauthenticated)
}

/// The status a request over the size limit gets. tonic refuses it from
/// its length prefix with `OUT_OF_RANGE`, which teal's handlers never
/// return themselves; teal's convention for every limit is
/// `RESOURCE_EXHAUSTED` naming it.
fn request_error(status: Status, max: usize) -> Status {
    if status.code() != tonic::Code::OutOfRange {
        return status;
    }
    let limit = Limit::CsdsRequestBytes;
    Status::resource_exhausted(format!(
        "a CSDS request is over the {limit} of {max} bytes ({flag}): {detail}",
        flag = limit.flag(),
        detail = status.message(),
    ))
}

/// The generated CSDS server, with requests over the size limit refused
/// as teal refuses every limit (`RESOURCE_EXHAUSTED` naming it): tonic answers a
/// unary call whose request is too large before teal's handler runs.
#[derive(Clone, Debug)]
pub(crate) struct CsdsServer {
    inner: ClientStatusDiscoveryServiceServer<ClientStatus>,
    max_request_bytes: usize,
}

impl NamedService for CsdsServer {
    const NAME: &'static str =
        <ClientStatusDiscoveryServiceServer<ClientStatus> as NamedService>::NAME;
}

impl<B> Service<http::Request<B>> for CsdsServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Service::<http::Request<B>>::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let max = self.max_request_bytes;
        let call: Pin<Box<_>> = Box::pin(self.inner.call(req));
        Box::pin(async move {
            let mut response = call.await?;
            // A refused unary request is answered with its status in the
            // headers (trailers only); streams map theirs themselves.
            match Status::from_header_map(response.headers()) {
                Some(status) if status.code() == tonic::Code::OutOfRange => {
                    Ok(request_error(status, max).into_http())
                }
                _ => {
                    // The answer's count goes with its body, which hyper
                    // drops once it is sent whole or the call ends.
                    if let Some(held) = response.extensions_mut().remove::<HeldAnswer>() {
                        response = response
                            .map(|inner| tonic::body::Body::new(HeldBody { inner, _held: held }));
                    }
                    Ok(response)
                }
            }
        })
    }
}

#[cfg(test)]
#[path = "csds_tests.rs"]
mod tests;
