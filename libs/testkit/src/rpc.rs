//! Calling any colend RPC by name with raw bytes: for tests that walk every
//! RPC of the service descriptors (the authorization matrix, the fuzzer).
use bytes::{Buf, BufMut};
use prost::Message;
use std::str::FromStr;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;

/// One RPC of a colend service.
#[derive(Clone, Debug)]
pub struct Method {
    /// "package.Service/Method".
    pub path: String,
    pub client_streaming: bool,
    pub server_streaming: bool,
}

/// Every RPC of every colend service, from the compiled descriptors.
pub fn methods() -> Vec<Method> {
    let set = prost_types::FileDescriptorSet::decode(colend_contracts::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let mut out = Vec::new();
    for f in set.file {
        let pkg = f.package().to_string();
        if !pkg.starts_with("colend.") {
            continue;
        }
        for s in &f.service {
            for m in &s.method {
                out.push(Method {
                    path: format!("{pkg}.{}/{}", s.name(), m.name()),
                    client_streaming: m.client_streaming(),
                    server_streaming: m.server_streaming(),
                });
            }
        }
    }
    out
}

/// Sends and receives raw bytes.
#[derive(Clone, Copy, Default)]
pub struct Raw;
pub struct RawEncoder;
pub struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let mut v = vec![0; src.remaining()];
        src.copy_to_slice(&mut v);
        Ok(Some(v))
    }
}

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

/// Calls `m` with `metadata` and `body` (an encoded request; `None` sends no
/// message on a client stream and an empty one, valid for any request type,
/// otherwise). A server stream counts as answered at its first message.
pub async fn call(
    ch: &Channel,
    m: &Method,
    metadata: MetadataMap,
    body: Option<Vec<u8>>,
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(ch.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = http::uri::PathAndQuery::from_str(&format!("/{}", m.path))
        .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    let req = |b| {
        let mut r = tonic::Request::new(b);
        *r.metadata_mut() = metadata.clone();
        r
    };
    if m.client_streaming {
        let stream = futures::stream::iter(body.into_iter().collect::<Vec<_>>());
        let mut r = tonic::Request::new(stream);
        *r.metadata_mut() = metadata.clone();
        return grpc.client_streaming(r, path, Raw).await.map(|_| ());
    }
    let body = body.unwrap_or_default();
    if m.server_streaming {
        let mut s = grpc
            .server_streaming(req(body), path, Raw)
            .await?
            .into_inner();
        return s.message().await.map(|_| ());
    }
    grpc.unary(req(body), path, Raw).await.map(|_| ())
}
