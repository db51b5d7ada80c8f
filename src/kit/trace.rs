//! W3C trace context (`traceparent`), so that one request can be followed across agent-service,
//! workflow-service and Langflow in the logs.
//!
//! The RPC log layer takes the caller's `traceparent` (or starts a new trace), logs its trace id
//! with the call, and makes it the current context while the handler runs; outgoing calls (to
//! workflow-service, to Langflow) send a child `traceparent` from [`current`].

use std::fmt;

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

    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.header())
    }
}

fn nonzero_random() -> u128 {
    // UUIDv4 bits are random enough for ids that only have to be unique.
    uuid::Uuid::new_v4().as_u128().max(1)
}

/// Runs `future` with `context` as the current trace.
pub async fn scope<F: Future>(context: TraceContext, future: F) -> F::Output {
    CURRENT.scope(context, future).await
}

/// The current trace context, if the code runs inside an RPC.
pub fn current() -> Option<TraceContext> {
    CURRENT.try_with(|c| *c).ok()
}

/// The `traceparent` to send on an outgoing call: a child of the current context.
pub fn outgoing_header() -> Option<String> {
    current().map(|c| c.child().header())
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
    }

    #[tokio::test]
    async fn the_context_is_current_inside_its_scope_only() {
        let root = TraceContext::new_root();
        assert_eq!(current(), None);
        assert_eq!(scope(root, async { current() }).await, Some(root));
    }
}
