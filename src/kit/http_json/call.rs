//! The in-process gRPC call behind each HTTP/JSON request: the request message, gRPC-framed,
//! goes through the very tower service the gRPC port serves (the kit's [`CallLayer`] around the
//! service's routes), so authentication, tenancy, access rules, the log line, metrics, the
//! concurrency limit and the call's deadline are the gRPC port's, not a copy of them. The answer is read back from the
//! gRPC response body: its messages, and the status of its trailers (or of its headers, for a
//! trailers-only answer).
//!
//! [`CallLayer`]: crate::kit::calls::CallLayer

use std::convert::Infallible;
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::BodyExt as _;
use prost::Message as _;
use prost_reflect::DynamicMessage;
use tower::ServiceExt as _;

use super::rules::Binding;
use crate::kit::tls::PeerIdentity;

/// The layered gRPC service of a server, as the HTTP port calls it.
pub type GrpcService =
    tower::util::BoxCloneSyncService<http::Request<tonic::body::Body>, http::Response<tonic::body::Body>, Infallible>;

/// The request headers that pass to the call as gRPC metadata, as they are.
const FORWARDED: [&str; 7] =
    ["authorization", "x-tenant-id", "x-subject", "traceparent", "tracestate", "x-request-id", "grpc-timeout"];

/// grpc-gateway's convention for any other metadata: `Grpc-Metadata-<key>: value` passes as `<key>`.
const METADATA_PREFIX: &str = "grpc-metadata-";

/// What the call takes from its HTTP request besides the message.
pub struct CallContext {
    pub metadata: HeaderMap,
    pub peer: Option<PeerIdentity>,
    pub tcp: tonic::transport::server::TcpConnectInfo,
}

impl CallContext {
    /// The metadata of `headers`. A client's deadline (`X-Request-Timeout` in seconds, or a
    /// gRPC-style `grpc-timeout`) passes as `grpc-timeout`: the call layer fixes the call's
    /// deadline from it, capped by RPC_TIMEOUT_SECS, exactly as for a gRPC call.
    pub fn from_headers(
        headers: &HeaderMap,
        peer: Option<PeerIdentity>,
        tcp: tonic::transport::server::TcpConnectInfo,
    ) -> Result<Self, tonic::Status> {
        let mut metadata = HeaderMap::new();
        for name in FORWARDED {
            for value in headers.get_all(name) {
                metadata.append(HeaderName::from_static(name), value.clone());
            }
        }
        for (name, value) in headers {
            if let Some(key) = name.as_str().strip_prefix(METADATA_PREFIX)
                && !key.is_empty()
                && let Ok(key) = HeaderName::from_bytes(key.as_bytes())
            {
                // Never the call's framing headers.
                if key.as_str().starts_with("grpc-") || key == http::header::CONTENT_TYPE || key == "te" {
                    continue;
                }
                metadata.append(key, value.clone());
            }
        }
        if let Some(value) = headers.get("x-request-timeout") {
            let seconds = value
                .to_str()
                .ok()
                .map(|v| v.trim().trim_end_matches('s'))
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|s| s.is_finite() && *s > 0.0)
                .ok_or_else(|| {
                    tonic::Status::invalid_argument("X-Request-Timeout: expected a positive number of seconds")
                })?;
            // Past a day the server's own limit is the shorter anyway.
            metadata.insert("grpc-timeout", grpc_timeout(Duration::from_secs_f64(seconds.min(86_400.0))));
        }
        Ok(Self { metadata, peer, tcp })
    }
}

/// `grpc-timeout` in milliseconds (at most 8 digits, as the header allows).
fn grpc_timeout(timeout: Duration) -> HeaderValue {
    let millis = timeout.as_millis().clamp(1, 99_999_999);
    HeaderValue::from_str(&format!("{millis}m")).unwrap_or_else(|_| HeaderValue::from_static("99999999m"))
}

/// Starts the call: answers the reader of its response messages, or the status that ended it
/// before any (a trailers-only answer, or the deadline).
pub async fn start(
    service: GrpcService,
    binding: &Binding,
    message: &DynamicMessage,
    context: CallContext,
) -> Result<MessageReader, tonic::Status> {
    let encoded = message.encode_to_vec();
    let length = u32::try_from(encoded.len())
        .map_err(|_| tonic::Status::invalid_argument("the request is larger than a gRPC message may be"))?;
    let mut framed = BytesMut::with_capacity(5 + encoded.len());
    framed.extend_from_slice(&[0]);
    framed.extend_from_slice(&length.to_be_bytes());
    framed.extend_from_slice(&encoded);

    let mut request = http::Request::new(tonic::body::Body::new(http_body_util::Full::new(framed.freeze())));
    *request.method_mut() = http::Method::POST;
    *request.version_mut() = http::Version::HTTP_2;
    *request.uri_mut() =
        binding.grpc_path.parse().map_err(|_| tonic::Status::internal("the RPC's path is not a valid URI"))?;
    let headers = request.headers_mut();
    *headers = context.metadata;
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    if let Some(peer) = context.peer {
        request.extensions_mut().insert(peer);
    }
    request.extensions_mut().insert(context.tcp);

    // The call layer answers DEADLINE_EXCEEDED past the call's deadline, as on the gRPC port.
    let response = match service.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if let Some(status) = tonic::Status::from_header_map(response.headers())
        && status.code() != tonic::Code::Ok
    {
        return Err(status);
    }
    Ok(MessageReader { body: response.into_body(), buffer: BytesMut::new(), done: false })
}

/// The messages of a gRPC response body, one at a time, then its trailers' status.
pub struct MessageReader {
    body: tonic::body::Body,
    buffer: BytesMut,
    done: bool,
}

impl MessageReader {
    /// The next message, None at the end of an OK answer, or the status the answer ended with.
    pub async fn next(&mut self) -> Result<Option<Bytes>, tonic::Status> {
        loop {
            if let Some(message) = self.split_message()? {
                return Ok(Some(message));
            }
            if self.done {
                return Ok(None);
            }
            match self.body.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buffer.extend_from_slice(&data),
                    Err(frame) => {
                        if let Some(trailers) = frame.trailers_ref() {
                            self.done = true;
                            if let Some(status) = tonic::Status::from_header_map(trailers)
                                && status.code() != tonic::Code::Ok
                            {
                                return Err(status);
                            }
                        }
                    }
                },
                Some(Err(status)) => return Err(status),
                None => {
                    self.done = true;
                    if !self.buffer.is_empty() {
                        return Err(tonic::Status::internal("the answer ended inside a message"));
                    }
                }
            }
        }
    }

    /// The first whole message of the buffer.
    fn split_message(&mut self) -> Result<Option<Bytes>, tonic::Status> {
        if self.buffer.len() < 5 {
            return Ok(None);
        }
        if self.buffer[0] != 0 {
            // We never ask for compression (no grpc-accept-encoding), so none comes.
            return Err(tonic::Status::internal("a compressed answer was not asked for"));
        }
        let length = u32::from_be_bytes([self.buffer[1], self.buffer[2], self.buffer[3], self.buffer[4]]) as usize;
        if self.buffer.len() < 5 + length {
            return Ok(None);
        }
        self.buffer.advance(5);
        Ok(Some(self.buffer.split_to(length).freeze()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp() -> tonic::transport::server::TcpConnectInfo {
        tonic::transport::server::TcpConnectInfo { local_addr: None, remote_addr: None }
    }

    #[test]
    fn only_the_call_metadata_passes() {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer t"));
        headers.insert("x-tenant-id", HeaderValue::from_static("t1"));
        headers.insert("cookie", HeaderValue::from_static("secret"));
        headers.insert("grpc-metadata-x-client", HeaderValue::from_static("ui"));
        headers.insert("grpc-metadata-content-type", HeaderValue::from_static("text/plain"));
        let context = CallContext::from_headers(&headers, None, tcp()).unwrap();
        assert_eq!(context.metadata.get("authorization").unwrap(), "Bearer t");
        assert_eq!(context.metadata.get("x-tenant-id").unwrap(), "t1");
        assert_eq!(context.metadata.get("x-client").unwrap(), "ui");
        assert!(context.metadata.get("cookie").is_none());
        assert!(context.metadata.get("content-type").is_none());
    }

    #[test]
    fn a_client_deadline_passes_as_grpc_timeout() {
        let mut headers = HeaderMap::new();
        headers.insert("x-request-timeout", HeaderValue::from_static("1.5"));
        let context = CallContext::from_headers(&headers, None, tcp()).unwrap();
        assert_eq!(context.metadata.get("grpc-timeout").unwrap(), "1500m");
        headers.insert("x-request-timeout", HeaderValue::from_static("600s"));
        let context = CallContext::from_headers(&headers, None, tcp()).unwrap();
        assert_eq!(context.metadata.get("grpc-timeout").unwrap(), "600000m");
        headers.insert("x-request-timeout", HeaderValue::from_static("soon"));
        assert!(CallContext::from_headers(&headers, None, tcp()).is_err());
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", HeaderValue::from_static("200m"));
        let context = CallContext::from_headers(&headers, None, tcp()).unwrap();
        assert_eq!(context.metadata.get("grpc-timeout").unwrap(), "200m");
    }
}
