//! The codec of the node's gRPC servers: tonic's prost codec, except that a request that does
//! not decode (a string field that is not UTF-8, a truncated field, a wrong wire type) is
//! answered `InvalidArgument` rather than tonic's `Internal`. gRPC's status code table lists
//! `Internal` for that case, but here it would tell a client that sent garbage that the server
//! failed, and a retrying client that it may retry; the client is the one to fix it.
//!
//! Clients keep tonic's codec: an answer that does not decode is the server's fault.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstCodec;

/// Named by `codec_path` in `build.rs`; the generated servers make one with `default()`.
#[derive(Debug, Clone, Default)]
pub struct RequestCodec<T, U> {
    inner: ProstCodec<T, U>,
}

impl<T, U> Codec for RequestCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.inner.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(PhantomData)
    }
}

/// Decodes a request; a malformed one is the client's error.
#[derive(Debug, Clone)]
pub struct RequestDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        U::decode(buf).map(Some).map_err(|e| Status::invalid_argument(format!("invalid request: {e}")))
    }
}
