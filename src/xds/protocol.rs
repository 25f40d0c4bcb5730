//! Protocol vocabulary shared by the state-of-the-world and delta streams.

use std::collections::BTreeSet;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::google::rpc;

use crate::xds::resources::ResourceType;
use crate::xds::snapshot::{GroupSnapshot, Snapshot};
use crate::xds::wire::OutMessage;

use super::limits::{ECHO_BYTES, Limit, OverLimit, StreamLimits, cut};

/// The resource name that means "everything of this type".
pub(crate) const WILDCARD: &str = "*";

/// Which gRPC method a stream came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// ADS: every type on one stream, ordered make-before-break.
    Aggregated,
    /// A per-type service (CDS, EDS, LDS or RDS) carrying one type.
    Single(ResourceType),
}

/// Who is on the other end of a stream, from the first request's `node`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// `node.id`: unique per proxy.
    pub id: String,
    /// `node.cluster`: the proxy group whose view it is served.
    pub cluster: String,
    /// `node.user_agent_name` and version, for status (for example
    /// `envoy 1.40.0` or `grpc-go`).
    pub user_agent: String,
}

impl NodeInfo {
    /// Reads the identity out of a request's `node`. A node without an id
    /// cannot be told apart from others, so it is refused; so is one whose
    /// id, cluster or user agent is longer than `max_field_bytes`, since
    /// teal keeps them for as long as the stream lasts and shows them in
    /// status, tables and logs.
    pub(crate) fn from_node(
        node: &Node,
        max_field_bytes: usize,
    ) -> Result<NodeInfo, ProtocolError> {
        if node.id.is_empty() {
            return Err(ProtocolError::MissingNode);
        }
        use envoy_types::pb::envoy::config::core::v3::node::UserAgentVersionType;
        let given_version = match &node.user_agent_version_type {
            Some(UserAgentVersionType::UserAgentVersion(v)) => v.as_str(),
            _ => "",
        };
        for (field, value) in [
            ("node.id", node.id.as_str()),
            ("node.cluster", node.cluster.as_str()),
            ("node.user_agent_name", node.user_agent_name.as_str()),
            ("node.user_agent_version", given_version),
        ] {
            OverLimit::check(
                Limit::NodeFieldBytes,
                || field.to_owned(),
                value.len(),
                max_field_bytes,
            )?;
        }
        let version = match &node.user_agent_version_type {
            Some(UserAgentVersionType::UserAgentVersion(v)) => v.clone(),
            Some(UserAgentVersionType::UserAgentBuildVersion(b)) => b
                .version
                .as_ref()
                .map(|v| format!("{}.{}.{}", v.major_number, v.minor_number, v.patch))
                .unwrap_or_default(),
            None => String::new(),
        };
        let user_agent = [node.user_agent_name.as_str(), version.as_str()]
            .iter()
            .filter(|s| !s.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
        Ok(NodeInfo {
            id: node.id.clone(),
            cluster: node.cluster.clone(),
            user_agent,
        })
    }
}

/// What a client has asked for of one type.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Subscribed to every resource of the type (`*`, or the legacy empty
    /// first request).
    pub(crate) wildcard: bool,
    /// Resources asked for by name (besides the wildcard, if any).
    pub(crate) names: BTreeSet<String>,
}

impl Subscription {
    /// Whether `name` is covered.
    pub(crate) fn covers(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }

    /// Whether `other` asks for anything this subscription does not.
    pub(crate) fn grew_from(&self, other: &Subscription) -> bool {
        (self.wildcard && !other.wildcard) || !self.names.is_subset(&other.names)
    }
}

/// How a client answered a response, per the xDS spec: a request carrying
/// the response's nonce is an ACK, unless it has `error_detail`, which
/// makes it a NACK.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reply {
    /// The client applied the response.
    Ack,
    /// The client rejected the response, with its reason.
    Nack(String),
}

impl Reply {
    /// Classifies a request's `error_detail`. A NACK's message is kept to
    /// its first `max_message_bytes` (cut marked), so status, history,
    /// progress and logs only ever see bounded text.
    pub(crate) fn from_error_detail(
        detail: Option<&rpc::Status>,
        max_message_bytes: usize,
    ) -> Reply {
        match detail {
            None => Reply::Ack,
            Some(status) => Reply::Nack(cut(&status.message, max_message_bytes)),
        }
    }
}

/// Something a stream did that status and logs care about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// A response was sent.
    Sent {
        /// The type.
        ty: ResourceType,
        /// Its `version_info` (`system_version_info` for delta).
        version: String,
        /// Its nonce.
        nonce: String,
        /// How many resources it carried.
        resources: usize,
    },
    /// The client applied a version.
    Acked {
        /// The type.
        ty: ResourceType,
        /// The version applied.
        version: String,
    },
    /// The client rejected a version.
    Nacked {
        /// The type.
        ty: ResourceType,
        /// The version rejected.
        version: String,
        /// The client's reason, as it sent it (cut to
        /// [`StreamLimits::max_nack_bytes`]).
        message: String,
    },
    /// A request answered a response that is no longer the latest; its
    /// ACK or NACK was ignored.
    StaleNonce {
        /// The type.
        ty: ResourceType,
        /// The stale nonce (cut: it is the client's text).
        nonce: String,
    },
}

/// A request that breaks the protocol. The stream is closed with the
/// matching gRPC status; other streams are not affected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The first request of a stream had no node, or a node without an id.
    #[error("the first request on a stream must carry a node with an id")]
    MissingNode,
    /// The request names a type teal does not serve.
    #[error("unknown resource type {0:?}")]
    UnknownType(String),
    /// A per-type stream was sent a request for another type.
    #[error("this stream serves {expected} but the request asked for {got:?}")]
    WrongType {
        /// The type the stream serves.
        expected: ResourceType,
        /// The type URL asked for.
        got: String,
    },
    /// The node changed identity in the middle of a stream.
    #[error("node id changed mid-stream from {from:?} to {to:?}")]
    NodeChanged {
        /// The id the stream started with.
        from: String,
        /// The id a later request carried.
        to: String,
    },
    /// The client went past one of teal's limits.
    #[error(transparent)]
    OverLimit(#[from] OverLimit),
}

impl From<ProtocolError> for tonic::Status {
    fn from(e: ProtocolError) -> tonic::Status {
        match e {
            ProtocolError::OverLimit(_) => tonic::Status::resource_exhausted(e.to_string()),
            _ => tonic::Status::invalid_argument(e.to_string()),
        }
    }
}

/// Works out the type a request is for on a stream of `kind`.
fn request_type(kind: StreamKind, type_url: &str) -> Result<ResourceType, ProtocolError> {
    match kind {
        StreamKind::Single(expected) if type_url.is_empty() => Ok(expected),
        StreamKind::Single(expected) => match ResourceType::from_type_url(type_url) {
            Some(t) if t == expected => Ok(t),
            _ => Err(ProtocolError::WrongType {
                expected,
                got: cut(type_url, ECHO_BYTES),
            }),
        },
        StreamKind::Aggregated => ResourceType::from_type_url(type_url)
            .ok_or_else(|| ProtocolError::UnknownType(cut(type_url, ECHO_BYTES))),
    }
}

/// Tracks the node a stream belongs to: set by the first request, and
/// only checked afterwards (Envoy may omit it after the first request).
#[derive(Debug, Default)]
struct NodeSlot(Option<NodeInfo>);

impl NodeSlot {
    fn observe(
        &mut self,
        node: Option<&Node>,
        max_field_bytes: usize,
    ) -> Result<(), ProtocolError> {
        match (&self.0, node) {
            (None, Some(n)) => {
                self.0 = Some(NodeInfo::from_node(n, max_field_bytes)?);
                Ok(())
            }
            (None, None) => Err(ProtocolError::MissingNode),
            (Some(known), Some(n)) if !n.id.is_empty() && n.id != known.id => {
                OverLimit::check(
                    Limit::NodeFieldBytes,
                    || "node.id".to_owned(),
                    n.id.len(),
                    max_field_bytes,
                )?;
                Err(ProtocolError::NodeChanged {
                    from: known.id.clone(),
                    to: n.id.clone(),
                })
            }
            (Some(_), _) => Ok(()),
        }
    }

    fn get(&self) -> Option<&NodeInfo> {
        self.0.as_ref()
    }
}

/// What every stream keeps whatever its flavour: the method it came in
/// on, who is on the other end, and its nonces.
#[derive(Debug)]
pub(crate) struct StreamHead {
    kind: StreamKind,
    limits: StreamLimits,
    node: NodeSlot,
    nonces: Nonces,
}

impl StreamHead {
    pub(crate) fn new(kind: StreamKind, limits: StreamLimits) -> StreamHead {
        StreamHead {
            kind,
            limits,
            node: NodeSlot::default(),
            nonces: Nonces::default(),
        }
    }

    /// The bounds this stream enforces.
    pub(crate) fn limits(&self) -> &StreamLimits {
        &self.limits
    }

    /// Checks what every request must have: a node on the stream's first
    /// request (and the same one after), and a type this stream serves.
    pub(crate) fn accept(
        &mut self,
        node: Option<&Node>,
        type_url: &str,
    ) -> Result<ResourceType, ProtocolError> {
        self.node.observe(node, self.limits.max_node_field_bytes)?;
        request_type(self.kind, type_url)
    }

    /// The proxy, once its first request arrived.
    pub(crate) fn node(&self) -> Option<&NodeInfo> {
        self.node.get()
    }

    /// Checks that a subscription to `ty` of `names` names totalling
    /// `bytes` bytes stays within this stream's limits.
    pub(crate) fn check_subscription(
        &self,
        ty: ResourceType,
        names: usize,
        bytes: usize,
    ) -> Result<(), ProtocolError> {
        let what = || format!("the {ty} subscription");
        OverLimit::check(
            Limit::SubscriptionNames,
            what,
            names,
            self.limits.max_subscription_names,
        )?;
        OverLimit::check(
            Limit::SubscriptionBytes,
            what,
            bytes,
            self.limits.max_subscription_bytes,
        )?;
        Ok(())
    }

    /// A nonce for the next response.
    pub(crate) fn next_nonce(&mut self) -> String {
        self.nonces.next()
    }
}

/// Hands out this stream's nonces. Nonces only need to be unique within
/// a stream and type; a counter is enough and keeps tests readable.
#[derive(Debug, Default)]
struct Nonces(u64);

impl Nonces {
    fn next(&mut self) -> String {
        self.0 += 1;
        self.0.to_string()
    }
}

/// A response the state machine wants sent.
#[derive(Debug)]
pub struct Response {
    /// The type.
    pub ty: ResourceType,
    /// The encoded response.
    pub message: OutMessage,
}

/// What one input produced.
#[derive(Debug, Default)]
pub struct Output {
    /// Responses to send, in order.
    pub responses: Vec<Response>,
    /// What happened, for status and logs.
    pub events: Vec<StreamEvent>,
}

/// A stream state machine, SotW or delta: what the gRPC layer drives
/// (`xds::server` is generic over it), and what both do after every
/// input: visit each type in make-before-break order and send what is due.
///
/// The machines implement the parts that differ (reading a request,
/// choosing one type's response); the order of types, the
/// make-before-break rule and the answer to a new snapshot are written
/// once, here.
pub trait Planner: Send + Sized + 'static {
    /// The request message of the stream.
    type Request: prost::Message + Default + Send + 'static;

    /// Whether this is a delta stream (the proxy registry shows it).
    const DELTA: bool;

    /// A new stream of `kind` that enforces `limits`.
    fn with_limits(kind: StreamKind, limits: StreamLimits) -> Self;

    /// The proxy on the stream, once its first request arrived.
    fn node(&self) -> Option<&NodeInfo>;

    /// Handles one request against the current snapshot.
    fn on_request(
        &mut self,
        req: &Self::Request,
        snapshot: &Snapshot,
    ) -> Result<Output, ProtocolError>;

    /// The stream's subscription to `ty`, once the client asked for it.
    fn subscription(&self, ty: ResourceType) -> Option<&Subscription>;

    /// The response due for `ty`, if any, recording what it sends.
    fn next_response(
        &mut self,
        ty: ResourceType,
        group: &GroupSnapshot,
        out: &mut Output,
    ) -> Option<Response>;

    /// Make-before-break ordering applies when the client takes every
    /// cluster (Envoy). Clients that ask for clusters by name, such as
    /// proxyless gRPC, ask for them only after they see the route, so
    /// holding the route back would deadlock them; they order for
    /// themselves.
    fn make_before_break(&self) -> bool {
        self.subscription(ResourceType::Cluster)
            .is_some_and(|c| c.wildcard)
    }

    /// Sends, in make-before-break order, every response that is due.
    fn plan(&mut self, snapshot: &Snapshot, out: &mut Output) {
        let Some(node) = self.node() else {
            return;
        };
        let group = snapshot.group(&node.cluster).clone();
        for ty in ResourceType::ALL {
            if let Some(response) = self.next_response(ty, &group, out) {
                out.responses.push(response);
            }
        }
    }

    /// Handles a newly published snapshot.
    fn on_snapshot(&mut self, snapshot: &Snapshot) -> Output {
        let mut out = Output::default();
        self.plan(snapshot, &mut out);
        out
    }
}
