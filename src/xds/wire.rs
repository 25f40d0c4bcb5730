//! Hand-assembled protobuf for discovery responses, so that each response
//! is encoded once and shared by every stream.
//!
//! Protobuf lets a message's fields arrive in any order and concatenated
//! encodings merge, so a `DiscoveryResponse` is the shared body (version,
//! resources, type URL) followed by the one field that differs per stream,
//! the nonce. A `DeltaDiscoveryResponse` is likewise spliced from resources
//! encoded once per snapshot. [`OutMessage`] carries those shared pieces to
//! the gRPC codec, which copies them into the frame without re-encoding.
//!
//! Field numbers are those of `envoy/service/discovery/v3/discovery.proto`;
//! the tests below decode every assembled message with prost to prove it.

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

/// `DiscoveryResponse` field numbers.
mod sotw_field {
    pub(super) const VERSION_INFO: u32 = 1;
    pub(super) const RESOURCES: u32 = 2;
    pub(super) const TYPE_URL: u32 = 4;
    pub(super) const NONCE: u32 = 5;
}

/// `DeltaDiscoveryResponse` field numbers.
mod delta_field {
    pub(super) const SYSTEM_VERSION_INFO: u32 = 1;
    pub(super) const RESOURCES: u32 = 2;
    pub(super) const TYPE_URL: u32 = 4;
    pub(super) const NONCE: u32 = 5;
    pub(super) const REMOVED_RESOURCES: u32 = 6;
}

/// `Resource` (the delta wrapper) field numbers.
mod resource_field {
    pub(super) const VERSION: u32 = 1;
    pub(super) const RESOURCE: u32 = 2;
    pub(super) const NAME: u32 = 3;
}

fn put_bytes_field(buf: &mut BytesMut, tag: u32, value: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(value.len() as u64, buf);
    buf.put_slice(value);
}

fn bytes_field_len(tag: u32, len: usize) -> usize {
    prost::encoding::key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A string field on its own, ready to append to a message.
fn string_field(tag: u32, value: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(bytes_field_len(tag, value.len()));
    put_bytes_field(&mut buf, tag, value.as_bytes());
    buf.freeze()
}

/// One resource (an encoded `Any`) as field 2 of a `DiscoveryResponse`,
/// key and length included, so responses holding a client's own selection
/// of resources are spliced from these pieces without copying them.
pub(crate) fn sotw_resource(any: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(bytes_field_len(sotw_field::RESOURCES, any.len()));
    put_bytes_field(&mut buf, sotw_field::RESOURCES, any);
    buf.freeze()
}

/// The shared part of a state-of-the-world `DiscoveryResponse`: everything
/// but the nonce.
pub(crate) fn sotw_body<'a>(
    version: &str,
    type_url: &str,
    resources: impl IntoIterator<Item = &'a Bytes>,
) -> Bytes {
    let resources: Vec<&Bytes> = resources.into_iter().collect();
    let len = bytes_field_len(sotw_field::VERSION_INFO, version.len())
        + resources
            .iter()
            .map(|r| bytes_field_len(sotw_field::RESOURCES, r.len()))
            .sum::<usize>()
        + bytes_field_len(sotw_field::TYPE_URL, type_url.len());
    let mut buf = BytesMut::with_capacity(len);
    put_bytes_field(&mut buf, sotw_field::VERSION_INFO, version.as_bytes());
    for r in resources {
        put_bytes_field(&mut buf, sotw_field::RESOURCES, r);
    }
    put_bytes_field(&mut buf, sotw_field::TYPE_URL, type_url.as_bytes());
    buf.freeze()
}

/// One delta `Resource` wrapper, encoded as field 2 of a
/// `DeltaDiscoveryResponse` (key and length included) so responses are
/// spliced from these pieces as they are.
pub(crate) fn delta_resource(name: &str, version: &str, any: &[u8]) -> Bytes {
    let inner_len = bytes_field_len(resource_field::VERSION, version.len())
        + bytes_field_len(resource_field::RESOURCE, any.len())
        + bytes_field_len(resource_field::NAME, name.len());
    let mut buf = BytesMut::with_capacity(bytes_field_len(delta_field::RESOURCES, inner_len));
    encode_key(delta_field::RESOURCES, WireType::LengthDelimited, &mut buf);
    encode_varint(inner_len as u64, &mut buf);
    put_bytes_field(&mut buf, resource_field::VERSION, version.as_bytes());
    put_bytes_field(&mut buf, resource_field::RESOURCE, any);
    put_bytes_field(&mut buf, resource_field::NAME, name.as_bytes());
    buf.freeze()
}

/// An encoded response on its way to the gRPC codec: pieces that are
/// written one after the other. Most pieces are shared with other streams.
#[derive(Clone, Debug, Default)]
pub struct OutMessage {
    parts: Vec<Bytes>,
}

impl OutMessage {
    /// A state-of-the-world response: a shared body plus this stream's nonce.
    pub(crate) fn sotw(body: Bytes, nonce: &str) -> OutMessage {
        OutMessage {
            parts: vec![body, string_field(sotw_field::NONCE, nonce)],
        }
    }

    /// A state-of-the-world response from resources encoded by
    /// [`sotw_resource`]: the version, the resources as they are (shared,
    /// not copied), then the type URL and this stream's nonce. For
    /// selections a client chose, which are not worth caching.
    pub(crate) fn sotw_parts(
        version: &str,
        type_url: &str,
        resources: impl IntoIterator<Item = Bytes>,
        nonce: &str,
    ) -> OutMessage {
        let mut parts = vec![string_field(sotw_field::VERSION_INFO, version)];
        parts.extend(resources);
        let mut tail = BytesMut::with_capacity(
            bytes_field_len(sotw_field::TYPE_URL, type_url.len())
                + bytes_field_len(sotw_field::NONCE, nonce.len()),
        );
        put_bytes_field(&mut tail, sotw_field::TYPE_URL, type_url.as_bytes());
        put_bytes_field(&mut tail, sotw_field::NONCE, nonce.as_bytes());
        parts.push(tail.freeze());
        OutMessage { parts }
    }

    /// A delta response from resources encoded by [`delta_resource`].
    pub(crate) fn delta(
        system_version: &str,
        type_url: &str,
        resources: impl IntoIterator<Item = Bytes>,
        removed: &[String],
        nonce: &str,
    ) -> OutMessage {
        let mut head = BytesMut::new();
        put_bytes_field(
            &mut head,
            delta_field::SYSTEM_VERSION_INFO,
            system_version.as_bytes(),
        );
        put_bytes_field(&mut head, delta_field::TYPE_URL, type_url.as_bytes());
        put_bytes_field(&mut head, delta_field::NONCE, nonce.as_bytes());
        for name in removed {
            put_bytes_field(&mut head, delta_field::REMOVED_RESOURCES, name.as_bytes());
        }
        let mut parts = vec![head.freeze()];
        parts.extend(resources);
        OutMessage { parts }
    }

    /// The first piece (the shared body of a state-of-the-world response),
    /// for tests that check sharing.
    #[cfg(test)]
    pub(crate) fn first_part(&self) -> Option<&Bytes> {
        self.parts.first()
    }

    /// Encoded length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    /// Writes the message into `dst`.
    pub(crate) fn write_to(&self, dst: &mut impl BufMut) {
        for part in &self.parts {
            dst.put_slice(part);
        }
    }

    /// The message as one contiguous buffer (tests and simulated clients).
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.len());
        self.write_to(&mut buf);
        buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryResponse, DiscoveryResponse, Resource,
    };
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;

    fn any(n: u8) -> Any {
        Any {
            type_url: "type.googleapis.com/x.Y".into(),
            value: vec![n; 3 + n as usize],
        }
    }

    #[test]
    fn sotw_response_decodes_as_prost_would_encode_it() {
        let resources: Vec<Bytes> = (0..3).map(|n| any(n).encode_to_vec().into()).collect();
        let body = sotw_body("v7", "type.googleapis.com/x.Y", &resources);
        let msg = OutMessage::sotw(body, "n-42");
        let decoded = DiscoveryResponse::decode(msg.to_bytes()).expect("decodes");
        let expected = DiscoveryResponse {
            version_info: "v7".into(),
            resources: (0..3).map(any).collect(),
            type_url: "type.googleapis.com/x.Y".into(),
            nonce: "n-42".into(),
            ..Default::default()
        };
        assert_eq!(decoded, expected);
        assert_eq!(msg.len(), expected.encoded_len());
    }

    #[test]
    fn sotw_response_from_parts_decodes_as_prost_would_encode_it() {
        let resources: Vec<Bytes> = (0..3)
            .map(|n| sotw_resource(&any(n).encode_to_vec()))
            .collect();
        let msg = OutMessage::sotw_parts("v7", "type.googleapis.com/x.Y", resources, "n-42");
        let decoded = DiscoveryResponse::decode(msg.to_bytes()).expect("decodes");
        let expected = DiscoveryResponse {
            version_info: "v7".into(),
            resources: (0..3).map(any).collect(),
            type_url: "type.googleapis.com/x.Y".into(),
            nonce: "n-42".into(),
            ..Default::default()
        };
        assert_eq!(decoded, expected);
        assert_eq!(msg.len(), expected.encoded_len());
    }

    #[test]
    fn delta_response_decodes_as_prost_would_encode_it() {
        let pieces: Vec<Bytes> = (0..2)
            .map(|n| delta_resource(&format!("r{n}"), &format!("h{n}"), &any(n).encode_to_vec()))
            .collect();
        let msg = OutMessage::delta(
            "v3",
            "type.googleapis.com/x.Y",
            pieces,
            &["gone".to_string()],
            "n1",
        );
        let decoded = DeltaDiscoveryResponse::decode(msg.to_bytes()).expect("decodes");
        let expected = DeltaDiscoveryResponse {
            system_version_info: "v3".into(),
            resources: (0..2)
                .map(|n| Resource {
                    name: format!("r{n}"),
                    version: format!("h{n}"),
                    resource: Some(any(n)),
                    ..Default::default()
                })
                .collect(),
            type_url: "type.googleapis.com/x.Y".into(),
            removed_resources: vec!["gone".into()],
            nonce: "n1".into(),
            ..Default::default()
        };
        assert_eq!(decoded, expected);
    }

    #[test]
    fn empty_sotw_response_is_valid() {
        let body = sotw_body("", "t", []);
        let decoded =
            DiscoveryResponse::decode(OutMessage::sotw(body, "1").to_bytes()).expect("decodes");
        assert!(decoded.resources.is_empty());
        assert_eq!(decoded.nonce, "1");
    }
}
