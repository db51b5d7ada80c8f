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
        decode_checked(buf).map(Some)
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Decodes `U` from all of `buf` (a decode error is INVALID_ARGUMENT), then refuses it when it
/// fails its receipt check.
fn decode_checked<U: Message + Default + CheckOnReceipt>(buf: impl prost::bytes::Buf) -> Result<U, Status> {
    let may_hold_nul = may_hold_nul(&buf);
    let message: U = decode_message(buf)?;
    if may_hold_nul {
        let violations = message.violations();
        if !violations.is_empty() {
            return Err(invalid_argument(&violations));
        }
    }
    Ok(message)
}

/// Whether the message in `buf` may hold a string with U+0000: false only when none of its
/// bytes is 0. A NUL in a string is a 0 byte on the wire (strings are their UTF-8 bytes, and no
/// other character's UTF-8 has one), so a message without any 0 byte has no NUL, and the walk
/// over its strings is skipped (one `memchr` over the bytes instead). A 0 byte is also a
/// varint 0, a length 0 or part of a fixed-width number, so its presence only means the strings
/// must be walked. The message's bytes are one slice (tonic gathers them in one buffer); were
/// they not, the walk is never skipped.
fn may_hold_nul(buf: &impl prost::bytes::Buf) -> bool {
    let bytes = buf.chunk();
    bytes.len() != buf.remaining() || bytes.contains(&0)
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

    #[test]
    fn only_a_message_without_any_zero_byte_skips_the_walk() {
        let bytes = |b: &'static [u8]| prost::bytes::Bytes::from_static(b);
        assert!(!may_hold_nul(&bytes(&[0x0a, 0x02, b'o', b'k'])));
        assert!(may_hold_nul(&bytes(&[0x0a, 0x02, b'o', 0])));
        // A 0 byte that is not in a string (here the varint 0 of field 2) still walks.
        assert!(may_hold_nul(&bytes(&[0x10, 0x00])));
        assert!(!may_hold_nul(&bytes(&[])));
        // Bytes in more than one slice are always walked.
        let split = prost::bytes::Buf::chain(&b"\x0a\x01"[..], &b"a"[..]);
        assert!(may_hold_nul(&split));
    }

    /// As a server receives requests: NUL refused naming the field, whether or not the rest of
    /// the message has 0 bytes; text without NUL accepted, with 0 bytes elsewhere or without.
    #[test]
    fn a_request_with_nul_is_refused_naming_the_field_and_others_accepted() {
        use crate::proto::workflow::v1 as wpb;
        fn decode_request(request: &wpb::ListWorkflowsRequest) -> Result<wpb::ListWorkflowsRequest, Status> {
            decode_checked(prost::bytes::Bytes::from(prost::Message::encode_to_vec(request)))
        }
        let clean = wpb::ListWorkflowsRequest { name_contains: "social".into(), page_size: 5, ..Default::default() };
        // is_template false is a varint 0 on the wire: a 0 byte, but no NUL.
        let zero_byte = wpb::ListWorkflowsRequest { is_template: Some(false), ..clean.clone() };
        for request in [clean, zero_byte] {
            assert_eq!(decode_request(&request).unwrap(), request);
        }
        for request in [
            wpb::ListWorkflowsRequest { name_contains: "so\0cial".into(), ..Default::default() },
            wpb::ListWorkflowsRequest { name_contains: "\0".into(), is_template: Some(false), ..Default::default() },
        ] {
            let status = decode_request(&request).unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument);
            assert!(status.message().contains("name_contains"), "{}", status.message());
        }
    }
}
