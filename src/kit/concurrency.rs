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
//! whether one is needed.

use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tokio::sync::Semaphore;
use tower_layer::Layer;
use tower_service::Service;

/// Paths that never wait behind business calls: health probes and reflection.
pub fn is_exempt(path: &str) -> bool {
    super::plumbing::is_plumbing(path)
}

/// Serves at most `max` business RPCs at once (more wait for a permit, in arrival order);
/// health and reflection pass without one.
#[derive(Clone)]
pub struct BusinessConcurrencyLimitLayer {
    permits: Arc<Semaphore>,
}

impl BusinessConcurrencyLimitLayer {
    pub fn new(max: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(max)) }
    }
}

impl<S> Layer<S> for BusinessConcurrencyLimitLayer {
    type Service = BusinessConcurrencyLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BusinessConcurrencyLimit { inner, permits: self.permits.clone() }
    }
}

#[derive(Clone)]
pub struct BusinessConcurrencyLimit<S> {
    inner: S,
    permits: Arc<Semaphore>,
}

impl<S, B> Service<http::Request<B>> for BusinessConcurrencyLimit<S>
where
    S: Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if is_exempt(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        // The service that was polled ready goes with the call; a clone takes its place.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let permits = self.permits.clone();
        Box::pin(async move {
            // The semaphore is never closed, so acquiring only fails if it were; then serve
            // rather than fail the call.
            let _permit = permits.acquire_owned().await.ok();
            // Held until the response (for a stream, its headers) is ready, as tower's limit does.
            inner.call(req).await
        })
    }
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
