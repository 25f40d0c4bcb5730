//! The gRPC codec for discovery streams.
//!
//! Requests are decoded with prost as usual. Responses arrive already
//! encoded ([`OutMessage`]): the encoder only copies their shared pieces
//! into the frame, so a response that 10,000 streams send is encoded once,
//! not 10,000 times.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::wire::OutMessage;

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

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
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

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}
