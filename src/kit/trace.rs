//! W3C trace context (`traceparent`) and the spans of a trace, so that one request can be
//! followed across agent-service, workflow-service and Langflow, in the logs and, when traces
//! are exported ([`super::otlp`]), as spans.
//!
//! The RPC log layer takes the caller's `traceparent` (or starts a new trace), logs its trace id
//! with the call, and makes the call's server span the current context while the handler runs;
//! outgoing calls (to workflow-service, to Langflow) send the current span as the callee's parent
//! ([`outgoing_header`]), or their own client [`Span`] when it is recorded.
//!
//! A call's context is its server span's: the tracer draws the span's ids (with [`Ids`], as this
//! module draws its own), and the context logged and carried on is read from it, so the trace id
//! in the log lines is the exported one. Without an exporter, a [`Span`] is an empty `Option`:
//! no id is drawn for it, nothing allocated, nothing recorded.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

pub use opentelemetry::KeyValue;
pub use opentelemetry::trace::SpanKind;
use opentelemetry::trace::{
    SpanContext, SpanId, Status, TraceContextExt as _, TraceFlags, TraceId, TraceState, Tracer as _,
};
use opentelemetry_sdk::trace::SdkTracer;

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// A trace id and the id of the current span in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
}

impl TraceContext {
    /// A new trace.
    pub fn new_root() -> Self {
        Self { trace_id: nonzero_random(), span_id: nonzero_random() as u64 }
    }

    /// Parses `00-<32 hex>-<16 hex>-<2 hex>`; anything else is ignored (a new trace starts).
    pub fn parse(header: &str) -> Option<Self> {
        let mut parts = header.trim().split('-');
        let (version, trace, span, _flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if version != "00" || trace.len() != 32 || span.len() != 16 {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok().filter(|t| *t != 0)?;
        let span_id = u64::from_str_radix(span, 16).ok().filter(|s| *s != 0)?;
        Some(Self { trace_id, span_id })
    }

    /// A new span of the same trace, for an outgoing call.
    pub fn child(&self) -> Self {
        Self { trace_id: self.trace_id, span_id: nonzero_random() as u64 }
    }

    /// The `traceparent` header value.
    pub fn header(&self) -> String {
        format!("00-{:032x}-{:016x}-01", self.trace_id, self.span_id)
    }

    /// This span as a (remote) parent of an OpenTelemetry span.
    fn span_context(&self) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(self.trace_id.to_be_bytes()),
            SpanId::from_bytes(self.span_id.to_be_bytes()),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )
    }

    pub fn trace_id_hex(&self) -> String {
        self.trace_id_display().to_string()
    }

    /// The trace id as [`Self::trace_id_hex`] writes it, without making a string of it first.
    pub fn trace_id_display(&self) -> TraceIdHex {
        TraceIdHex(self.trace_id)
    }
}

/// A trace id, displayed as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceIdHex(pub u128);

impl fmt::Display for TraceIdHex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header())
    }
}

/// A random non-zero id. Ids only have to be unique, not secret, so each thread draws them from
/// a SplitMix64 sequence seeded once from the operating system's random source (a UUIDv4),
/// instead of asking the kernel (a `getrandom` system call) twice for every call served: that
/// was 2.7 % of workflow-service's CPU under GetWorkflow load.
fn nonzero_random() -> u128 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let (high, low) = uuid::Uuid::new_v4().as_u64_pair();
            high ^ low
        });
    }
    STATE.with(|state| {
        let next = || {
            // SplitMix64 (Steele, Lea, Flood 2014): a bijection of a Weyl sequence, so one
            // thread's draws repeat only after 2^64 of them.
            let s = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
            state.set(s);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        ((u128::from(next()) << 64) | u128::from(next())).max(1)
    })
}

/// Runs `future` with `context` as the current trace.
pub fn scope<F: Future>(context: TraceContext, future: F) -> tokio::task::futures::TaskLocalFuture<TraceContext, F> {
    CURRENT.scope(context, future)
}

/// The current trace context, if the code runs inside an RPC.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|c| *c).ok()
}

/// The `traceparent` to send on an outgoing call: the current span, the callee's parent.
pub fn outgoing_header() -> Option<String> {
    current().map(|c| c.header())
}

/// Runs `future` in the trace current now (if any), wherever it is polled: for work handed to a
/// task of its own (`tokio::spawn` does not carry task-locals).
pub fn carried<F: Future>(future: F) -> impl Future<Output = F::Output> {
    within(current(), future)
}

/// Runs `future` in `context` when there is one (a trace saved earlier, e.g. a queued caller's),
/// else as it is.
pub async fn within<F: Future>(context: Option<TraceContext>, future: F) -> F::Output {
    match context {
        Some(context) => CURRENT.scope(context, future).await,
        None => future.await,
    }
}

/// The tracer spans are recorded with, installed once by [`super::otlp::init`] when an OTLP
/// endpoint is configured. Unset (the default), no span is recorded.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The ids of recorded spans, drawn as [`TraceContext`] draws its own (no system call per id).
#[derive(Debug)]
pub(super) struct Ids;

impl opentelemetry_sdk::trace::IdGenerator for Ids {
    fn new_trace_id(&self) -> TraceId {
        TraceId::from_bytes(nonzero_random().to_be_bytes())
    }

    fn new_span_id(&self) -> SpanId {
        SpanId::from_bytes((nonzero_random() as u64).max(1).to_be_bytes())
    }
}

/// Records spans with `tracer` from now on; false when a tracer was installed before.
pub(super) fn install(tracer: SdkTracer) -> bool {
    TRACER.set(tracer).is_ok()
}

/// Whether spans are recorded (and exported): an OTLP endpoint is configured.
pub fn recording() -> bool {
    TRACER.get().is_some()
}

/// One span of a trace: recorded (and exported when it ends, on drop) when traces are exported,
/// else nothing at all.
#[must_use = "a span ends when it is dropped"]
pub struct Span(Option<Box<Recorded>>);

struct Recorded {
    context: TraceContext,
    span: opentelemetry_sdk::trace::Span,
}

impl Span {
    /// A span that records nothing.
    pub const NONE: Span = Span(None);

    /// The server span of a call, a child of the caller's span `parent` when the caller sent
    /// one, and the call's context (its trace and span ids, as logged). `name` and `attributes`
    /// are only built when the span is recorded.
    pub fn server(
        name: impl FnOnce() -> String,
        parent: Option<TraceContext>,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> (Self, TraceContext) {
        let span = match TRACER.get() {
            Some(tracer) => Self::record(tracer, name().into(), SpanKind::Server, parent, attributes()),
            None => Self::NONE,
        };
        let context = match &span.0 {
            Some(recorded) => recorded.context,
            None => parent.map(|parent| parent.child()).unwrap_or_else(TraceContext::new_root),
        };
        (span, context)
    }

    /// A client span for an outgoing call, a child of the current span (a new trace outside
    /// one: work of the service's own, such as its outbox or walker).
    pub fn client(name: impl FnOnce() -> Cow<'static, str>, attributes: impl FnOnce() -> Vec<KeyValue>) -> Self {
        match TRACER.get() {
            Some(tracer) => Self::record(tracer, name(), SpanKind::Client, current(), attributes()),
            None => Self::NONE,
        }
    }

    /// A span of database work (`system`: `postgresql` or `sqlite`), inside the current trace
    /// only: the background work of a service is not traced span by span.
    pub fn db(system: &'static str, operation: &'static str) -> Self {
        let (Some(tracer), Some(parent)) = (TRACER.get(), current()) else { return Self::NONE };
        let attributes = vec![KeyValue::new("db.system", system), KeyValue::new("db.operation.name", operation)];
        Self::record(tracer, operation.into(), SpanKind::Client, Some(parent), attributes)
    }

    fn record(
        tracer: &SdkTracer,
        name: Cow<'static, str>,
        kind: SpanKind,
        parent: Option<TraceContext>,
        attributes: Vec<KeyValue>,
    ) -> Self {
        let parent = match parent {
            Some(parent) => opentelemetry::Context::new().with_remote_span_context(parent.span_context()),
            None => opentelemetry::Context::new(),
        };
        let builder = tracer.span_builder(name).with_kind(kind).with_attributes(attributes);
        let span = tracer.build_with_context(builder, &parent);
        // The ids the tracer drew (with [`Ids`]) become the context the logs show and the
        // outgoing calls carry. A tracer shut down already gives an invalid one: record nothing.
        let ids = opentelemetry::trace::Span::span_context(&span);
        if !ids.is_valid() {
            return Self::NONE;
        }
        let context = TraceContext {
            trace_id: u128::from_be_bytes(ids.trace_id().to_bytes()),
            span_id: u64::from_be_bytes(ids.span_id().to_bytes()),
        };
        Span(Some(Box::new(Recorded { context, span })))
    }

    /// Whether this span is recorded.
    pub fn is_recorded(&self) -> bool {
        self.0.is_some()
    }

    /// Sets an attribute (a no-op when the span is not recorded).
    pub fn set_attribute(&mut self, attribute: KeyValue) {
        if let Some(recorded) = &mut self.0 {
            opentelemetry::trace::Span::set_attribute(&mut recorded.span, attribute);
        }
    }

    /// Marks the span failed, with `description` built only when the span is recorded.
    pub fn set_error(&mut self, description: impl FnOnce() -> String) {
        if let Some(recorded) = &mut self.0 {
            opentelemetry::trace::Span::set_status(&mut recorded.span, Status::error(description()));
        }
    }

    /// The `traceparent` of the call this span stands for: its own when it is recorded, else
    /// the current span's ([`outgoing_header`]).
    pub fn traceparent(&self) -> Option<String> {
        match &self.0 {
            Some(recorded) => Some(recorded.context.header()),
            None => outgoing_header(),
        }
    }

    /// Ends the span of a gRPC call with its status code (`rpc.grpc.status_code`), failed for
    /// the codes that OpenTelemetry counts as errors on the side of `kind`.
    pub fn end_rpc(mut self, kind: SpanKind, code: tonic::Code) {
        if self.is_recorded() {
            self.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
            if rpc_failed(&kind, code) {
                self.set_error(|| format!("{code:?}"));
            }
        }
    }
}

/// Whether a call that ended with `code` failed, as OpenTelemetry's gRPC conventions say: for a
/// server, only the codes that are its own fault; for a client, every code but OK.
fn rpc_failed(kind: &SpanKind, code: tonic::Code) -> bool {
    use tonic::Code;
    match kind {
        SpanKind::Server => matches!(
            code,
            Code::Unknown
                | Code::DeadlineExceeded
                | Code::Unimplemented
                | Code::Internal
                | Code::Unavailable
                | Code::DataLoss
        ),
        _ => code != Code::Ok,
    }
}

/// The `rpc.*` attributes of a gRPC method's path (`/package.Service/Method`).
pub fn rpc_attributes(path: &str) -> Vec<KeyValue> {
    let (service, method) = path.trim_start_matches('/').rsplit_once('/').unwrap_or(("", path));
    vec![
        KeyValue::new("rpc.system", "grpc"),
        KeyValue::new("rpc.service", service.to_owned()),
        KeyValue::new("rpc.method", method.to_owned()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_children_share_the_trace() {
        let root = TraceContext::new_root();
        let parsed = TraceContext::parse(&root.header()).unwrap();
        assert_eq!(parsed, root);
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
        assert!(TraceContext::parse("garbage").is_none());
        assert!(TraceContext::parse("00-00000000000000000000000000000000-0000000000000001-01").is_none());
        assert_eq!(root.trace_id_display().to_string(), format!("{:032x}", root.trace_id));
        assert_eq!(root.trace_id_hex().len(), 32);
    }

    #[test]
    fn new_traces_differ_within_and_across_threads() {
        let mut ids: Vec<u128> = (0..1000).map(|_| TraceContext::new_root().trace_id).collect();
        let other: Vec<u128> =
            std::thread::spawn(|| (0..1000).map(|_| TraceContext::new_root().trace_id).collect()).join().unwrap();
        ids.extend(other);
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 2000);
        assert!(ids.iter().all(|id| *id != 0));
    }

    #[test]
    fn rpc_spans_are_named_and_failed_as_opentelemetry_says() {
        let attributes = rpc_attributes("/engarde.workflow.v1.WorkflowService/GetWorkflow");
        let value = |key: &str| attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string());
        assert_eq!(value("rpc.system").as_deref(), Some("grpc"));
        assert_eq!(value("rpc.service").as_deref(), Some("engarde.workflow.v1.WorkflowService"));
        assert_eq!(value("rpc.method").as_deref(), Some("GetWorkflow"));
        // A caller's mistake is not the server's failure; every code but OK is the client's.
        assert!(!rpc_failed(&SpanKind::Server, tonic::Code::NotFound));
        assert!(!rpc_failed(&SpanKind::Server, tonic::Code::InvalidArgument));
        assert!(rpc_failed(&SpanKind::Server, tonic::Code::Internal));
        assert!(rpc_failed(&SpanKind::Server, tonic::Code::Unavailable));
        assert!(rpc_failed(&SpanKind::Client, tonic::Code::NotFound));
        assert!(!rpc_failed(&SpanKind::Client, tonic::Code::Ok));
    }

    #[tokio::test]
    async fn work_handed_to_a_task_stays_in_the_trace() {
        let root = TraceContext::new_root();
        let spawned = scope(root, async { tokio::spawn(carried(async { current() })).await.unwrap() }).await;
        assert_eq!(spawned, Some(root));
        assert_eq!(tokio::spawn(carried(async { current() })).await.unwrap(), None);
        // Outgoing calls name the current span as their parent.
        assert_eq!(scope(root, async { outgoing_header() }).await, Some(root.header()));
    }

    #[tokio::test]
    async fn the_context_is_current_inside_its_scope_only() {
        let root = TraceContext::new_root();
        assert_eq!(current(), None);
        assert_eq!(scope(root, async { current() }).await, Some(root));
    }
}
