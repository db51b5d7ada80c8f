//! The cap on business RPCs served at once (MAX_CONCURRENT_RPCS), which health checks and
//! reflection bypass.
//!
//! Under legitimate load (hundreds of slow executions in flight) the cap is reached and further
//! calls wait their turn. A liveness probe that waited with them would time out, and Kubernetes
//! would restart a pod that is merely busy; so `grpc.health.v1.Health/*` and `grpc.reflection.*`
//! neither wait for nor take a permit. They are cheap and answer from memory, so they need no cap.
//!
//! Unlike tower's `GlobalConcurrencyLimit`, which takes the permit in `poll_ready` (before the
//! request, and its path, is known), the permit is taken inside the call, once the path says
//! whether one is needed: by the kit's one layer around every call ([`super::calls`]), which
//! holds it until the response (for a stream, its headers) is ready, as tower's limit does.
//! More calls than permits wait for one in arrival order (a tokio `Semaphore`).

/// Paths that never wait behind business calls: health probes and reflection.
pub fn is_exempt(path: &str) -> bool {
    super::plumbing::is_plumbing(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_and_reflection_are_exempt_and_nothing_else() {
        assert!(is_exempt("/grpc.health.v1.Health/Check"));
        assert!(is_exempt("/grpc.health.v1.Health/Watch"));
        assert!(is_exempt("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
        assert!(is_exempt("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"));
        assert!(!is_exempt("/engarde.agent.v1.ExecutionService/ExecuteAgent"));
        assert!(!is_exempt("/grpc.health.v1.HealthX/Check"));
    }
}
