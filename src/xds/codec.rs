//! The gRPC codec for discovery streams.
//!
//! Requests are decoded with prost as usual. Responses arrive already
//! encoded ([`OutMessage`]): the encoder only copies their shared pieces
//! into the frame, so a response that 10,000 streams send is encoded once,
//! not 10,000 times.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::wire::OutMessage;

/// Decodes `D` requests and writes pre-encoded responses.
#[derive(Debug)]
pub struct XdsCodec<D>(PhantomData<D>);

impl<D> Default for XdsCodec<D> {
    fn default() -> Self {
        XdsCodec(PhantomData)
    }
}

impl<D: prost::Message + Default + Send + 'static> Codec for XdsCodec<D> {
    type Encode = OutMessage;
    type Decode = D;
    type Encoder = OutEncoder;
    type Decoder = RequestDecoder<D>;

    fn encoder(&mut self) -> OutEncoder {
        OutEncoder
    }

    fn decoder(&mut self) -> RequestDecoder<D> {
        RequestDecoder(PhantomData)
    }
}

/// Writes an [`OutMessage`] as it is.
#[derive(Debug)]
pub struct OutEncoder;

impl Encoder for OutEncoder {
    type Item = OutMessage;
    type Error = Status;

    fn encode(&mut self, item: OutMessage, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.len());
        item.write_to(dst);
        Ok(())
    }
}

/// Decodes a request with prost. A request that does not parse is the
/// client's fault, so it is `INVALID_ARGUMENT`.
#[derive(Debug)]
pub struct RequestDecoder<D>(PhantomData<D>);

impl<D: prost::Message + Default> Decoder for RequestDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(src)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed discovery request: {e}")))
    }
}
