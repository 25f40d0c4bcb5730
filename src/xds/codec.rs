//! The gRPC codec for discovery streams.
//!
//! Responses arrive already encoded ([`OutMessage`]): the encoder only
//! copies their shared pieces into the frame, so a response that 10,000
//! streams send is encoded once, not 10,000 times.
//!
//! Requests are decoded lean, and only after their name lists were counted
//! on the wire. A request is bounded in bytes (`--max-request-bytes`), but
//! what prost decodes it into is not: each of 80,000 names of 49 bytes
//! (4 MB on the wire) becomes a `String` of about 90 bytes, and a node's
//! `metadata` of tiny struct entries grows some twentyfold. So:
//!
//! - the name lists of a request (`resource_names`, delta's subscribe and
//!   unsubscribe lists and `initial_resource_versions`) are counted on the
//!   wire first, with no allocation, and a list past the subscription
//!   limits closes the stream with `RESOURCE_EXHAUSTED` before anything
//!   of the request is decoded;
//! - a request is decoded into teal's own messages ([`lean`]), which have
//!   only the fields teal reads; prost skips the others (node metadata,
//!   locality, extensions, resource locators, NACK details) without
//!   keeping them, and the lists are allocated at their counted size.
//!
//! What a request costs is then bounded by its size and the lengths of its
//! lists ([`super::limits::cost::request_bytes`]).

use std::borrow::Cow;
use std::marker::PhantomData;

use bytes::Buf;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::xds::resources::ResourceType;
use crate::xds::wire::OutMessage;

use super::limits::{Limit, OverLimit, StreamLimits};

/// Initial size of each stream's encode and decode buffers. tonic's
/// default is 8 KiB each, which would make buffers most of an idle
/// stream's memory; discovery requests are small and buffers grow when a
/// large response passes through.
const STREAM_BUFFER_BYTES: usize = 1024;

/// Past this many buffered bytes the encoder yields to let the transport
/// write (tonic's default).
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(STREAM_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

/// Decodes `D` requests and writes pre-encoded responses.
#[derive(Debug)]
pub(crate) struct XdsCodec<D> {
    limits: StreamLimits,
    _request: PhantomData<fn() -> D>,
}

impl<D> XdsCodec<D> {
    /// A codec that refuses requests whose name lists go past `limits`.
    pub(crate) fn new(limits: StreamLimits) -> Self {
        XdsCodec {
            limits,
            _request: PhantomData,
        }
    }
}

impl<D: XdsRequest> Codec for XdsCodec<D> {
    type Encode = OutMessage;
    type Decode = D;
    type Encoder = OutEncoder;
    type Decoder = RequestDecoder<D>;

    fn encoder(&mut self) -> OutEncoder {
        OutEncoder
    }

    fn decoder(&mut self) -> RequestDecoder<D> {
        RequestDecoder {
            limits: self.limits,
            _request: PhantomData,
        }
    }
}

/// Writes an [`OutMessage`] as it is.
#[derive(Debug)]
pub(crate) struct OutEncoder;

impl Encoder for OutEncoder {
    type Item = OutMessage;
    type Error = Status;

    fn encode(&mut self, item: OutMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.len());
        item.write_to(dst);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// Decodes a request: counts its name lists on the wire, then decodes
/// its lean form ([`XdsRequest`]). A request that does not parse is the
/// client's fault, so it is `INVALID_ARGUMENT`; one whose list is past a
/// limit is `RESOURCE_EXHAUSTED` naming the limit.
#[derive(Debug)]
pub(crate) struct RequestDecoder<D> {
    limits: StreamLimits,
    _request: PhantomData<fn() -> D>,
}

impl<D: XdsRequest> Decoder for RequestDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        let len = src.remaining();
        // tonic hands the decoder one whole message in one contiguous
        // buffer; copying is only the fallback should that ever change.
        let whole: Cow<'_, [u8]> = if src.chunk().len() == len {
            Cow::Borrowed(src.chunk())
        } else {
            Cow::Owned(src.copy_to_bytes(len).to_vec())
        };
        let decoded = decode_request::<D>(&whole, &self.limits);
        drop(whole);
        if src.remaining() > 0 {
            src.advance(src.remaining());
        }
        decoded.map(Some)
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

/// Checks `msg`'s name lists against `limits`, then decodes it.
fn decode_request<D: XdsRequest>(msg: &[u8], limits: &StreamLimits) -> Result<D, Status> {
    let malformed = |e: &dyn std::fmt::Display| {
        Status::invalid_argument(format!("malformed discovery request: {e}"))
    };
    let lists = NameLists::count::<D>(msg).map_err(|e| malformed(&e))?;
    lists
        .check(limits)
        .map_err(|e| Status::resource_exhausted(e.to_string()))?;
    D::decode_lean(msg, &lists).map_err(|e| malformed(&e))
}

/// A discovery request type the codec decodes: where its name lists are
/// on the wire, and how its lean form becomes the envoy-types message the
/// stream state machines take.
pub(crate) trait XdsRequest: Sized + Send + 'static {
    /// Field number of `type_url`.
    #[doc(hidden)]
    const TYPE_URL_FIELD: u32;
    /// Field numbers of the repeated-string name lists, with their names.
    #[doc(hidden)]
    const NAME_LISTS: &'static [(u32, &'static str)];
    /// Field number of a `map<string, string>` of names to versions, if
    /// any.
    #[doc(hidden)]
    const VERSION_MAP: Option<(u32, &'static str)>;
    /// Decodes what teal reads of `msg`, with the lists allocated at the
    /// sizes `lists` counted.
    #[doc(hidden)]
    fn decode_lean(msg: &[u8], lists: &NameLists) -> Result<Self, prost::DecodeError>;
}

impl XdsRequest for DiscoveryRequest {
    const TYPE_URL_FIELD: u32 = 4;
    const NAME_LISTS: &'static [(u32, &'static str)] = &[(3, "resource_names")];
    const VERSION_MAP: Option<(u32, &'static str)> = None;

    fn decode_lean(msg: &[u8], lists: &NameLists) -> Result<Self, prost::DecodeError> {
        let mut lean = lean::DiscoveryRequest {
            resource_names: Vec::with_capacity(lists.names(0)),
            ..Default::default()
        };
        lean.merge(msg)?;
        Ok(lean.into())
    }
}

impl XdsRequest for DeltaDiscoveryRequest {
    const TYPE_URL_FIELD: u32 = 2;
    const NAME_LISTS: &'static [(u32, &'static str)] = &[
        (3, "resource_names_subscribe"),
        (4, "resource_names_unsubscribe"),
    ];
    const VERSION_MAP: Option<(u32, &'static str)> = Some((5, "initial_resource_versions"));

    fn decode_lean(msg: &[u8], lists: &NameLists) -> Result<Self, prost::DecodeError> {
        let mut lean = lean::DeltaDiscoveryRequest {
            resource_names_subscribe: Vec::with_capacity(lists.names(0)),
            resource_names_unsubscribe: Vec::with_capacity(lists.names(1)),
            initial_resource_versions: std::collections::HashMap::with_capacity(lists.map.names),
            ..Default::default()
        };
        lean.merge(msg)?;
        Ok(lean.into())
    }
}

/// Size of one list of names on the wire.
#[derive(Clone, Copy, Debug, Default)]
struct ListSize {
    names: usize,
    bytes: usize,
}

/// The sizes of a request's name lists, counted on the wire.
#[derive(Debug)]
#[doc(hidden)]
pub(crate) struct NameLists {
    /// The type the request names, for messages.
    ty: Option<ResourceType>,
    /// One per [`XdsRequest::NAME_LISTS`] entry.
    lists: Vec<(&'static str, ListSize)>,
    /// [`XdsRequest::VERSION_MAP`]: entries, and bytes of names and
    /// versions.
    map: ListSize,
    map_name: &'static str,
}

impl NameLists {
    /// Counts the lists of a `D` in `msg`. Only the top level is walked
    /// and nothing is allocated.
    fn count<D: XdsRequest>(msg: &[u8]) -> Result<NameLists, WireError> {
        let mut lists: Vec<(&'static str, ListSize)> = D::NAME_LISTS
            .iter()
            .map(|(_, name)| (*name, ListSize::default()))
            .collect();
        let mut map = ListSize::default();
        let mut ty = None;
        for field in Fields(msg) {
            let (number, value) = field?;
            let Wire::Bytes(value) = value else { continue };
            if number == D::TYPE_URL_FIELD {
                ty = std::str::from_utf8(value)
                    .ok()
                    .and_then(ResourceType::from_type_url);
            } else if let Some(i) = D::NAME_LISTS.iter().position(|(n, _)| *n == number) {
                lists[i].1.names += 1;
                lists[i].1.bytes += value.len();
            } else if D::VERSION_MAP.is_some_and(|(n, _)| n == number) {
                // A map entry is a message: key (1) and value (2).
                map.names += 1;
                for entry_field in Fields(value) {
                    if let (1 | 2, Wire::Bytes(v)) = entry_field? {
                        map.bytes += v.len();
                    }
                }
            }
        }
        Ok(NameLists {
            ty,
            lists,
            map,
            map_name: D::VERSION_MAP.map_or("", |(_, name)| name),
        })
    }

    /// Names counted in the `i`th list.
    fn names(&self, i: usize) -> usize {
        self.lists.get(i).map_or(0, |(_, size)| size.names)
    }

    /// No list may hold more than a whole subscription may: a longer
    /// list would be refused by the stream anyway (or, for an unsubscribe
    /// list, does nothing a shorter one could not), so it is refused
    /// before it costs its decoded size.
    fn check(&self, limits: &StreamLimits) -> Result<(), OverLimit> {
        let map = (self.map_name, self.map);
        for (list, size) in self.lists.iter().copied().chain(std::iter::once(map)) {
            if list.is_empty() {
                continue;
            }
            let what = || match self.ty {
                Some(ty) => format!("the {ty} request's {list}"),
                None => format!("the request's {list}"),
            };
            OverLimit::check(
                Limit::SubscriptionNames,
                what,
                size.names,
                limits.max_subscription_names,
            )?;
            OverLimit::check(
                Limit::SubscriptionBytes,
                what,
                size.bytes,
                limits.max_subscription_bytes,
            )?;
        }
        Ok(())
    }
}

/// An encoded message that is not valid protobuf.
#[derive(Debug, thiserror::Error)]
#[error("invalid protobuf at byte {at}: {what}")]
#[doc(hidden)]
pub(crate) struct WireError {
    at: usize,
    what: &'static str,
}

/// One field's value on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wire<'a> {
    /// A varint (wire type 0).
    Varint(u64),
    /// A fixed 32- or 64-bit value (wire types 5 and 1), unread.
    Fixed,
    /// A length-delimited field (wire type 2): a string, bytes, a
    /// message or a packed list.
    Bytes(&'a [u8]),
}

/// The top-level fields of an encoded message: each field's number and
/// value.
///
/// Written here because prost's field-walking functions
/// (`prost::encoding`) are not public API; the protobuf wire format is
/// small and stable (<https://protobuf.dev/programming-guides/encoding/>).
/// Groups (wire types 3 and 4, proto2 only) are refused: no xDS request
/// has them.
pub(crate) struct Fields<'a>(pub(crate) &'a [u8]);

impl<'a> Fields<'a> {
    fn varint(&mut self) -> Option<u64> {
        let mut value = 0u64;
        for (i, byte) in self.0.iter().take(10).enumerate() {
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                self.0 = &self.0[i + 1..];
                return Some(value);
            }
        }
        None
    }

    fn take(&mut self, n: u64) -> Option<&'a [u8]> {
        let n = usize::try_from(n).ok().filter(|n| *n <= self.0.len())?;
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(taken)
    }

    fn next_field(&mut self, start: usize) -> Result<(u32, Wire<'a>), WireError> {
        let err = |what| WireError {
            at: start - self.0.len(),
            what,
        };
        let key = self.varint().ok_or_else(|| err("bad field key"))?;
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| err("bad field number"))?;
        match key & 7 {
            0 => {
                let v = self.varint().ok_or_else(|| err("bad varint"))?;
                Ok((number, Wire::Varint(v)))
            }
            1 => {
                self.take(8).ok_or_else(|| err("truncated fixed64"))?;
                Ok((number, Wire::Fixed))
            }
            2 => {
                let len = self.varint().ok_or_else(|| err("bad length"))?;
                let bytes = self.take(len).ok_or_else(|| err("truncated field"))?;
                Ok((number, Wire::Bytes(bytes)))
            }
            5 => {
                self.take(4).ok_or_else(|| err("truncated fixed32"))?;
                Ok((number, Wire::Fixed))
            }
            _ => Err(err("unsupported wire type")),
        }
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Wire<'a>), WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.0.is_empty() {
            return None;
        }
        let start = self.0.len();
        let field = self.next_field(start);
        if field.is_err() {
            // Nothing after a wire error can be read.
            self.0 = &[];
        }
        Some(field)
    }
}

/// teal's own decodings of the discovery requests: only the fields teal
/// reads. prost skips every other field on the wire without keeping it,
/// so what a request decodes into is bounded by the fields listed here.
/// Field numbers are those of `envoy.service.discovery.v3` and
/// `envoy.config.core.v3.Node`.
#[doc(hidden)]
pub(crate) mod lean {
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::service::discovery::v3 as discovery;
    use envoy_types::pb::envoy::r#type::v3::SemanticVersion;
    use envoy_types::pb::google::rpc;

    /// `envoy.config.core.v3.Node`: who the proxy is.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Node {
        #[prost(string, tag = "1")]
        pub(crate) id: String,
        #[prost(string, tag = "2")]
        pub(crate) cluster: String,
        #[prost(string, tag = "6")]
        pub(crate) user_agent_name: String,
        /// `user_agent_version` or `user_agent_build_version`.
        #[prost(oneof = "UserAgentVersion", tags = "7, 8")]
        pub(crate) user_agent_version: Option<UserAgentVersion>,
    }

    /// `Node.user_agent_version_type`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub(crate) enum UserAgentVersion {
        /// `user_agent_version`.
        #[prost(string, tag = "7")]
        Text(String),
        /// `user_agent_build_version`.
        #[prost(message, tag = "8")]
        Build(BuildVersion),
    }

    /// `envoy.config.core.v3.BuildVersion` without its metadata.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct BuildVersion {
        #[prost(message, optional, tag = "1")]
        pub(crate) version: Option<SemanticVersion>,
    }

    /// `google.rpc.Status` without its details: a NACK's code and message.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Status {
        #[prost(int32, tag = "1")]
        pub(crate) code: i32,
        #[prost(string, tag = "2")]
        pub(crate) message: String,
    }

    /// `envoy.service.discovery.v3.DiscoveryRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct DiscoveryRequest {
        #[prost(string, tag = "1")]
        pub(crate) version_info: String,
        #[prost(message, optional, tag = "2")]
        pub(crate) node: Option<Node>,
        #[prost(string, repeated, tag = "3")]
        pub(crate) resource_names: Vec<String>,
        #[prost(string, tag = "4")]
        pub(crate) type_url: String,
        #[prost(string, tag = "5")]
        pub(crate) response_nonce: String,
        #[prost(message, optional, tag = "6")]
        pub(crate) error_detail: Option<Status>,
    }

    /// `envoy.service.discovery.v3.DeltaDiscoveryRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct DeltaDiscoveryRequest {
        #[prost(message, optional, tag = "1")]
        pub(crate) node: Option<Node>,
        #[prost(string, tag = "2")]
        pub(crate) type_url: String,
        #[prost(string, repeated, tag = "3")]
        pub(crate) resource_names_subscribe: Vec<String>,
        #[prost(string, repeated, tag = "4")]
        pub(crate) resource_names_unsubscribe: Vec<String>,
        #[prost(map = "string, string", tag = "5")]
        pub(crate) initial_resource_versions: std::collections::HashMap<String, String>,
        #[prost(string, tag = "6")]
        pub(crate) response_nonce: String,
        #[prost(message, optional, tag = "7")]
        pub(crate) error_detail: Option<Status>,
    }

    impl From<Node> for core::Node {
        fn from(n: Node) -> core::Node {
            use core::node::UserAgentVersionType as V;
            core::Node {
                id: n.id,
                cluster: n.cluster,
                user_agent_name: n.user_agent_name,
                user_agent_version_type: n.user_agent_version.map(|v| match v {
                    UserAgentVersion::Text(t) => V::UserAgentVersion(t),
                    UserAgentVersion::Build(b) => V::UserAgentBuildVersion(core::BuildVersion {
                        version: b.version,
                        metadata: None,
                    }),
                }),
                ..Default::default()
            }
        }
    }

    impl From<Status> for rpc::Status {
        fn from(s: Status) -> rpc::Status {
            rpc::Status {
                code: s.code,
                message: s.message,
                details: Vec::new(),
            }
        }
    }

    impl From<DiscoveryRequest> for discovery::DiscoveryRequest {
        fn from(r: DiscoveryRequest) -> discovery::DiscoveryRequest {
            discovery::DiscoveryRequest {
                version_info: r.version_info,
                node: r.node.map(Into::into),
                resource_names: r.resource_names,
                resource_locators: Vec::new(),
                type_url: r.type_url,
                response_nonce: r.response_nonce,
                error_detail: r.error_detail.map(Into::into),
            }
        }
    }

    impl From<DeltaDiscoveryRequest> for discovery::DeltaDiscoveryRequest {
        fn from(r: DeltaDiscoveryRequest) -> discovery::DeltaDiscoveryRequest {
            discovery::DeltaDiscoveryRequest {
                node: r.node.map(Into::into),
                type_url: r.type_url,
                resource_names_subscribe: r.resource_names_subscribe,
                resource_names_unsubscribe: r.resource_names_unsubscribe,
                initial_resource_versions: r.initial_resource_versions,
                response_nonce: r.response_nonce,
                error_detail: r.error_detail.map(Into::into),
                ..Default::default()
            }
        }
    }
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
