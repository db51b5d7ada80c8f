//! The protobuf codec of every generated server and client (set as `codec_path` in build.rs):
//! prost's, with two differences on the decoding side.
//!
//! - Bytes that do not decode as the expected message (garbage, a string that is not UTF-8, a
//!   truncated message) are INVALID_ARGUMENT with prost's reason, instead of tonic-prost's
//!   INTERNAL: it is the caller's mistake, and INTERNAL would page the operators for it. The same
//!   codec decodes the answers the generated clients receive, where an undecodable message is the
//!   server's fault; there the code reads INVALID_ARGUMENT too, and agent-service's client of
//!   workflow-service treats any INVALID_ARGUMENT as its own bug (INTERNAL), as it should.
//! - Every message decoded passes [`CheckOnReceipt`]: a server thus refuses a request whose text
//!   breaks the rules of [`crate::text`] before any handler runs, for every RPC, streaming ones
//!   included; a client decoding answers checks nothing (answers implement the check as a no-op).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::ProstEncoder;
use tonic_types::{ErrorDetails, StatusExt};

use crate::text::CheckOnReceipt;

/// Encodes `T` and decodes `U` with prost; see the module documentation.
#[derive(Debug, Clone)]
pub struct CheckedCodec<T, U> {
    _messages: PhantomData<(T, U)>,
}

impl<T, U> Default for CheckedCodec<T, U> {
    fn default() -> Self {
        Self { _messages: PhantomData }
    }
}

impl<T, U> Codec for CheckedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + CheckOnReceipt + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder { _message: PhantomData }
    }
}

/// Decodes `U` (a decode error is INVALID_ARGUMENT), then refuses a message that fails its
/// receipt check.
#[derive(Debug, Clone)]
pub struct CheckedDecoder<U> {
    _message: PhantomData<U>,
}

impl<U: Message + Default + CheckOnReceipt> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let message: U = decode_message(buf)?;
        let violations = message.violations();
        if !violations.is_empty() {
            return Err(invalid_argument(&violations));
        }
        Ok(Some(message))
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

/// INVALID_ARGUMENT with google.rpc.BadRequest field violations, worded as the services'
/// own error table words them (`invalid request: field: description; …`).
fn invalid_argument(violations: &[(String, String)]) -> Status {
    let mut details = ErrorDetails::new();
    for (field, description) in violations {
        details.add_bad_request_violation(field.clone(), description.clone());
    }
    let text = violations.iter().map(|(f, d)| format!("{f}: {d}")).collect::<Vec<_>>().join("; ");
    Status::with_error_details(Code::InvalidArgument, format!("invalid request: {text}"), details)
}

#[cfg(test)]
mod tests {
    use super::*;

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
