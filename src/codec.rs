//! The codec of every generated client and server: prost's, plus [`CheckOnReceipt`] on each
//! message decoded. A server thus refuses a request whose text breaks the rules of
//! [`crate::text`] before any handler runs, for every RPC, streaming ones included; a client
//! decoding answers checks nothing (answers implement the check as a no-op).

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::{Code, Status};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};
use tonic_types::{ErrorDetails, StatusExt};

use crate::text::CheckOnReceipt;

/// `tonic_prost::ProstCodec` with the receipt check (set as `codec_path` in build.rs).
#[derive(Debug, Clone)]
pub struct CheckedCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for CheckedCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
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
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder(self.0.decoder())
    }
}

/// Decodes with prost, then refuses a message that fails its receipt check.
#[derive(Debug)]
pub struct CheckedDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default + CheckOnReceipt> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let decoded = self.0.decode(src)?;
        if let Some(message) = &decoded {
            let violations = message.violations();
            if !violations.is_empty() {
                return Err(invalid_argument(&violations));
            }
        }
        Ok(decoded)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
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
