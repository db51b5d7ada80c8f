//! One log line and one metric sample per RPC: method, tenant, trace id, gRPC status code and
//! latency. The caller's trace context (`traceparent`) is taken, or a trace started, and made
//! current while the handler runs, so that the calls it makes carry it on.
//!
//! A gRPC call's status is either in the response headers (a "trailers-only" error answer) or in
//! the trailers at the end of the body, so the line is written when one of them is seen, or when
//! the body is dropped unfinished (the client went away).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use tower_layer::Layer;
use tower_service::Service;

use super::auth::Tenant;
use super::trace::TraceContext;

#[derive(Clone, Default)]
pub struct RpcLogLayer;

impl<S> Layer<S> for RpcLogLayer {
    type Service = RpcLogService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcLogService { inner }
    }
}

#[derive(Clone)]
pub struct RpcLogService<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for RpcLogService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        if super::plumbing::is_plumbing(&method) {
            return Box::pin(self.inner.call(req));
        }
        let trace = req
            .headers()
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse)
            .map(|parent| parent.child())
            .unwrap_or_else(TraceContext::new_root);
        let record = CallRecord {
            tenant: req.extensions().get::<Tenant>().map(|t| t.to_string()).unwrap_or_default(),
            method,
            trace_id: trace.trace_id_hex(),
            start: Instant::now(),
            done: false,
        };
        let fut = super::trace::scope(trace, self.inner.call(req));
        Box::pin(async move {
            let mut record = record;
            let response = fut.await?;
            if let Some(code) = status_of(response.headers()) {
                record.finish(code);
                return Ok(response);
            }
            Ok(response.map(|body| tonic::body::Body::new(LoggedBody { inner: body, record })))
        })
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok()).map(tonic::Code::from)
}

struct CallRecord {
    method: String,
    tenant: String,
    trace_id: String,
    start: Instant,
    done: bool,
}

impl CallRecord {
    fn finish(&mut self, code: tonic::Code) {
        if self.done {
            return;
        }
        self.done = true;
        let elapsed = self.start.elapsed().as_secs_f64();
        super::metrics::record_rpc(&self.method, code, elapsed);
        let latency_ms = (elapsed * 1_000_000.0).round() / 1000.0;
        let code_name = format!("{code:?}");
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
