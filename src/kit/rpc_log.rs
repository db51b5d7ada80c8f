//! One log line and one metric sample per RPC: method, tenant, trace id, gRPC status code and
//! latency. The caller's trace context (`traceparent`) is taken, or a trace started, and made
//! current while the handler runs, so that the calls it makes carry it on.
//!
//! A gRPC call's status is either in the response headers (a "trailers-only" error answer) or in
//! the trailers at the end of the body, so the line is written when one of them is seen, or when
//! the body is dropped unfinished (the client went away).
//!
//! The record is started and finished by the kit's one layer around every call
//! ([`super::calls`]), after authentication and around the business concurrency limit, so that
//! its latency counts the wait for a permit and its code is the one the caller gets.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};

use super::auth::Tenant;
use super::trace::{KeyValue, Span, SpanKind, TraceContext, TraceIdHex};

fn status_of(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok()).map(tonic::Code::from)
}

/// The log line and metric sample of one business call (health and reflection have none),
/// started when the call arrives (see [`super::calls`]) and written once its code is known.
pub(super) struct CallRecord {
    method: String,
    tenant: Tenant,
    trace_id: TraceIdHex,
    /// The call's server span, recorded when traces are exported.
    span: Span,
    start: Instant,
    done: bool,
}

impl CallRecord {
    /// Starts the record of `req`, the call of `tenant`, and answers the trace the call runs
    /// in: its server span, a child of the caller's `traceparent`, or a new trace.
    pub(super) fn start<B>(req: &http::Request<B>, tenant: &Tenant) -> (Self, TraceContext) {
        let parent = req.headers().get("traceparent").and_then(|v| v.to_str().ok()).and_then(TraceContext::parse);
        let method = req.uri().path();
        let (span, trace) = Span::server(
            || method.trim_start_matches('/').to_owned(),
            parent,
            || {
                let mut attributes = super::trace::rpc_attributes(method);
                attributes.push(KeyValue::new("engarde.tenant_id", tenant.as_str().to_owned()));
                attributes
            },
        );
        let record = CallRecord {
            method: method.to_owned(),
            tenant: tenant.clone(),
            trace_id: trace.trace_id_display(),
            span,
            start: Instant::now(),
            done: false,
        };
        (record, trace)
    }

    /// The call's response, its record written now when the headers carry the code (a
    /// trailers-only answer), else when the body's trailers go out or the body is dropped.
    pub(super) fn respond(mut self, response: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
        if let Some(code) = status_of(response.headers()) {
            self.finish(code);
            return response;
        }
        response.map(|body| tonic::body::Body::new(LoggedBody { inner: body, record: self }))
    }

    fn finish(&mut self, code: tonic::Code) {
        if self.done {
            return;
        }
        self.done = true;
        std::mem::replace(&mut self.span, Span::NONE).end_rpc(SpanKind::Server, code);
        let elapsed = self.start.elapsed().as_secs_f64();
        let code_name = code_name(code);
        super::metrics::record_rpc(&self.method, code_name, elapsed);
        let latency_ms = (elapsed * 1_000_000.0).round() / 1000.0;
        match code {
            tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss => {
                tracing::error!(rpc = %self.method, tenant = %self.tenant, trace_id = %self.trace_id, code = %code_name, latency_ms, "rpc")
            }
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::ResourceExhausted => {
                tracing::warn!(rpc = %self.method, tenant = %self.tenant, trace_id = %self.trace_id, code = %code_name, latency_ms, "rpc")
            }
            _ => {
                tracing::info!(rpc = %self.method, tenant = %self.tenant, trace_id = %self.trace_id, code = %code_name, latency_ms, "rpc")
            }
        }
    }
}

/// A code's name as its `Debug` writes it (`NotFound`), without formatting a string per call.
pub(super) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "Ok",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

impl Drop for CallRecord {
    fn drop(&mut self) {
        // The body was dropped before its trailers: the client cancelled or disconnected.
        self.finish(tonic::Code::Cancelled);
    }
}

struct LoggedBody {
    inner: tonic::body::Body,
    record: CallRecord,
}

impl Body for LoggedBody {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(trailers) = frame.trailers_ref()
        {
            let code = status_of(trailers).unwrap_or(tonic::Code::Ok);
            self.record.finish(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_the_debug_names() {
        for value in 0..=16 {
            let code = tonic::Code::from(value);
            assert_eq!(code_name(code), format!("{code:?}"));
        }
    }
}
