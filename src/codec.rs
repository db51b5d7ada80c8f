//! The protobuf codec of every generated server and client (set in build.rs): prost's, except
//! that bytes which do not decode as the expected message are INVALID_ARGUMENT, with prost's
//! reason, instead of tonic-prost's INTERNAL.
//!
//! A request that does not decode (garbage, a string that is not UTF-8, a truncated message) is
//! the caller's mistake, and INTERNAL would page the operators for it. The same codec decodes
//! the answers the generated clients receive, where an undecodable message is the server's
//! fault; there the code reads INVALID_ARGUMENT too, and agent-service's client of
//! workflow-service treats any INVALID_ARGUMENT as its own bug (INTERNAL), as it should.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstEncoder;

/// Encodes `T` and decodes `U` with prost; see the module documentation.
#[derive(Debug, Clone)]
pub struct ProstCodec<T, U> {
    _messages: PhantomData<(T, U)>,
}

impl<T, U> Default for ProstCodec<T, U> {
    fn default() -> Self {
        Self { _messages: PhantomData }
    }
}

impl<T, U> Codec for ProstCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder { _message: PhantomData }
    }
}

/// Decodes `U`; a decode error is INVALID_ARGUMENT.
#[derive(Debug, Clone)]
pub struct ProstDecoder<U> {
    _message: PhantomData<U>,
}

impl<U: Message + Default> Decoder for ProstDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        decode_message(buf).map(Some)
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Decodes one message; bytes that are not one are INVALID_ARGUMENT with prost's reason
/// ("failed to decode Protobuf message: <message>.<field>: <what is wrong>").
fn decode_message<U: Message + Default>(buf: impl prost::bytes::Buf) -> Result<U, Status> {
    U::decode(buf).map_err(|error| Status::invalid_argument(format!("the message does not decode: {error}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    /// A string field (1) holding bytes that are not UTF-8.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Named {
        #[prost(string, tag = "1")]
        name: String,
    }

    fn decode(bytes: &[u8]) -> Result<Named, Status> {
        decode_message(bytes)
    }

    #[test]
    fn bytes_that_are_not_the_message_are_invalid_argument() {
        let invalid_utf8 = [0x0a, 0x02, 0xff, 0xfe];
        let truncated = [0x0a, 0x05, b'a', b'b'];
        let garbage = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        for bytes in [&invalid_utf8[..], &truncated, &garbage] {
            let status = decode(bytes).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{bytes:?}: {status:?}");
            assert!(status.message().contains("failed to decode Protobuf message"), "{status:?}");
        }
        assert_eq!(decode(&[0x0a, 0x02, b'o', b'k']).unwrap(), Named { name: "ok".into() });
    }
}
