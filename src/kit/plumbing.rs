//! Which requests are the server's own plumbing rather than business calls.

/// Whether a request path is the server's own plumbing, health probes and reflection: answered
/// without credentials, never waiting behind business calls, and not logged call by call.
pub fn is_plumbing(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}
