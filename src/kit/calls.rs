//! Everything the kit does around one call, in one layer and one future: authentication, the
//! call's trace and its log line and metrics, the business concurrency limit, and the
//! reclassification of broken framing as INVALID_ARGUMENT.
//!
//! Each used to be a tower layer of its own, each boxing a future per call (four boxes, four
//! indirect polls); folded here they cost one. What each does, and why, is documented where its
//! rules live: [`super::auth`], [`super::rpc_log`], [`super::concurrency`],
//! [`super::malformed_request`]. In the order a call meets them:
//!
//! 1. health and reflection ([`super::plumbing`]) pass without credentials, log line or permit;
//! 2. the caller is authenticated (a refusal is answered here, with its own log line); a token
//!    whose key an identity provider's set lacks first waits, inside the call, for the shared
//!    and rate-limited refetch of the set ([`super::jwks`]), then comes back here once;
//! 3. the call's trace is taken or started, and its log record started (its latency counts the
//!    wait for a permit);
//! 4. a business permit is taken, inside the call, once the path says one is needed (waiting
//!    in arrival order when none is free), and held until the response (headers) is ready;
//! 5. the handler runs with the trace current, until the call's deadline ([`super::deadline`],
//!    fixed on arrival): past it the caller is answered DEADLINE_EXCEEDED;
//! 6. an INTERNAL answer to broken framing becomes INVALID_ARGUMENT, then the call is logged
//!    with the code the caller gets (or when its body ends, for answers with trailers).

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_layer::Layer;
use tower_service::Service;

use super::auth::{Authenticator, Subject, Tenant, tenant_header};
use super::concurrency::is_exempt;
use super::deadline::CallDeadline;
use super::malformed_request::reclassify;
use super::rpc_log::CallRecord;
use super::service_identity::{ServiceAccess, ServiceCaller, ServiceVerifier};
use super::tls::PeerIdentity;

/// The kit's layer around every route of a server; see the module documentation.
#[derive(Clone)]
pub struct CallLayer {
    callers: Arc<Callers>,
    permits: Arc<Semaphore>,
    rpc_timeout: Duration,
}

/// Who may call: tenants, authenticated by `authenticator`, and our own services, by
/// `services` (when a service secret is configured) or by a verified client certificate named
/// in `certified_services` (mTLS), each to the RPCs `access` allows.
pub struct Callers {
    pub authenticator: Authenticator,
    pub services: Option<ServiceVerifier>,
    pub certified_services: Vec<String>,
    pub access: ServiceAccess,
}

impl Callers {
    /// The tenant and subject of a call of `path` (a service's subject is `svc:<name>`), or the
    /// status that refuses the call (UNAUTHENTICATED, PERMISSION_DENIED).
    fn identify(
        &self,
        path: &str,
        headers: &http::HeaderMap,
        peer: Option<&PeerIdentity>,
    ) -> Result<(Tenant, Subject), tonic::Status> {
        // A bearer token speaks for the call; only a call without one is the certificate's
        // (agent-service forwards its callers' tokens over the same connection; in dev mode,
        // where callers send none, nobody is authenticated and a certificate names no one).
        let service = match self.services.as_ref().and_then(|verifier| verifier.verify(headers)) {
            Some(caller) => Some(caller),
            None if self.authenticator.authenticates() && !headers.contains_key(http::header::AUTHORIZATION) => peer
                .filter(|peer| self.certified_services.iter().any(|name| name == peer.as_str()))
                .map(|peer| ServiceCaller(peer.as_str().to_owned())),
            None => None,
        };
        // Authenticated first, so that a bad token is UNAUTHENTICATED whatever it calls.
        let identity = match &service {
            Some(caller) => {
                let tenant = tenant_header(headers)?.ok_or_else(|| {
                    tonic::Status::invalid_argument("a service call must name the tenant it acts for in x-tenant-id")
                })?;
                (tenant, Subject::service(caller))
            }
            None => self.authenticator.identify(headers)?,
        };
        self.access.check(path, service.as_ref(), self.authenticator.authenticates())?;
        Ok(identity)
    }
}

impl CallLayer {
    /// Authenticates `callers`, serves at most `max_concurrent_rpcs` business calls at once
    /// (MAX_CONCURRENT_RPCS), and answers each within `rpc_timeout` or its caller's shorter
    /// `grpc-timeout` (RPC_TIMEOUT_SECS).
    pub fn new(callers: Callers, max_concurrent_rpcs: usize, rpc_timeout: Duration) -> Self {
        callers.authenticator.start_key_refresh();
        Self { callers: Arc::new(callers), permits: Arc::new(Semaphore::new(max_concurrent_rpcs)), rpc_timeout }
    }
}

impl<S> Layer<S> for CallLayer {
    type Service = CallService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CallService {
            inner,
            callers: self.callers.clone(),
            permits: self.permits.clone(),
            rpc_timeout: self.rpc_timeout,
        }
    }
}

#[derive(Clone)]
pub struct CallService<S> {
    inner: S,
    callers: Arc<Callers>,
    permits: Arc<Semaphore>,
    rpc_timeout: Duration,
}

impl<S, B> Service<http::Request<B>> for CallService<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if is_exempt(req.uri().path()) {
            let response = self.inner.call(req);
            return Box::pin(async move {
                let mut response = response.await?;
                reclassify(response.headers_mut());
                Ok(response)
            });
        }
        // Fixed on arrival, once: a call that waits for a refetch of the keys keeps its deadline.
        let deadline = match CallDeadline::of(req.extensions()) {
            Some(deadline) => deadline,
            None => {
                let deadline = CallDeadline::arriving(req.headers(), self.rpc_timeout);
                req.extensions_mut().insert(deadline);
                deadline
            }
        };
        // JWKS: an unknown kid waits for a refetch of the keys, then authenticates once (marked).
        if req.extensions_mut().remove::<KeysRefetched>().is_none()
            && let Some(refetch) = self.callers.authenticator.keys_refetch(req.headers())
        {
            req.extensions_mut().insert(KeysRefetched);
            let ready = self.clone();
            let mut service = std::mem::replace(self, ready);
            return Box::pin(async move {
                refetch.await;
                service.call(req).await
            });
        }
        let (tenant, subject) = match self.callers.identify(
            req.uri().path(),
            req.headers(),
            req.extensions().get::<PeerIdentity>(),
        ) {
            Ok(identity) => identity,
            Err(status) => {
                // Logged under auth's target, as it always was.
                tracing::info!(target: "engarde::kit::auth", rpc = req.uri().path(), code = ?status.code(), reason = status.message(), "rejected unauthenticated call");
                return Box::pin(async move { Ok(status.into_http()) });
            }
        };
        let (record, trace) = CallRecord::start(&req, &tenant);
        req.extensions_mut().insert(tenant);
        req.extensions_mut().insert(subject);
        // A free permit is taken at once and the handler called now; only when none is free does
        // the call keep a clone of the service (the one polled ready goes with it) and wait.
        let start = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => Start::Called(self.inner.call(req), Some(permit)),
            Err(_) => {
                let ready = self.inner.clone();
                Start::Waiting(Box::new((std::mem::replace(&mut self.inner, ready), req, self.permits.clone())))
            }
        };
        Box::pin(async move {
            let record = record;
            let response = super::trace::scope(trace, async move {
                let (response, permit) = match start {
                    Start::Called(response, permit) => (response, permit),
                    Start::Waiting(waiting) => {
                        let (mut inner, req, permits) = *waiting;
                        // The semaphore is never closed, so acquiring only fails if it were;
                        // then serve rather than fail the call.
                        let permit = permits.acquire_owned().await.ok();
                        (inner.call(req), permit)
                    }
                };
                // Held until the response (for a stream, its headers) is ready, as tower's
                // limit does. Past the deadline the handler is dropped (work that must outlive
                // its caller, such as an execution's record, runs in a task of its own).
                let response = match tokio::time::timeout_at(deadline.instant(), response).await {
                    Ok(response) => response,
                    Err(_) => Ok(tonic::Status::deadline_exceeded(
                        "the call's deadline passed before it was answered (its grpc-timeout, or RPC_TIMEOUT_SECS)",
                    )
                    .into_http()),
                };
                drop(permit);
                response
            })
            .await;
            let mut response = response?;
            reclassify(response.headers_mut());
            Ok(record.respond(response))
        })
    }
}

/// How a business call starts: called at once with its permit, or waiting for one (boxed, so
/// that the future of every call stays small for the rare one that waits).
enum Start<S: Service<http::Request<B>>, B> {
    Called(S::Future, Option<OwnedSemaphorePermit>),
    Waiting(Box<(S, http::Request<B>, Arc<Semaphore>)>),
}

/// Marks a call that already waited for a refetch of the identity provider's keys.
#[derive(Clone, Copy)]
struct KeysRefetched;

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use tower::ServiceExt as _;

    use super::*;
    use crate::kit::auth::{Authenticator, Tenant};

    fn layer(rpc_timeout: Duration) -> CallLayer {
        let callers = Callers {
            authenticator: Authenticator::development(Tenant::parse("dev").unwrap()),
            services: None,
            certified_services: Vec::new(),
            access: ServiceAccess::default(),
        };
        CallLayer::new(callers, 4, rpc_timeout)
    }

    /// A handler that answers OK after `delay`.
    fn answering_after(
        delay: Duration,
    ) -> impl Service<http::Request<()>, Response = http::Response<tonic::body::Body>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static {
        tower::service_fn(move |_request: http::Request<()>| async move {
            tokio::time::sleep(delay).await;
            Ok::<_, Infallible>(tonic::Status::ok("").into_http())
        })
    }

    fn call(grpc_timeout: Option<&str>) -> http::Request<()> {
        let mut request = http::Request::builder().uri("/engarde.workflow.v1.WorkflowService/GetWorkflow");
        if let Some(timeout) = grpc_timeout {
            request = request.header("grpc-timeout", timeout);
        }
        request.body(()).unwrap()
    }

    fn code(response: &http::Response<tonic::body::Body>) -> Option<&str> {
        response.headers().get("grpc-status").and_then(|v| v.to_str().ok())
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_is_answered_deadline_exceeded() {
        let deadline_exceeded = (tonic::Code::DeadlineExceeded as i32).to_string();
        // The caller's grpc-timeout, when shorter than the server's.
        let service = layer(Duration::from_secs(30)).layer(answering_after(Duration::from_secs(5)));
        let response = service.clone().oneshot(call(Some("200m"))).await.unwrap();
        assert_eq!(code(&response), Some(deadline_exceeded.as_str()));
        // The server's RPC timeout, when the caller sets none or a longer one.
        let service = layer(Duration::from_millis(200)).layer(answering_after(Duration::from_secs(5)));
        for timeout in [None, Some("10S")] {
            let response = service.clone().oneshot(call(timeout)).await.unwrap();
            assert_eq!(code(&response), Some(deadline_exceeded.as_str()), "{timeout:?}");
        }
        // In time: the handler's answer.
        let service = layer(Duration::from_secs(30)).layer(answering_after(Duration::from_millis(10)));
        let response = service.oneshot(call(Some("5S"))).await.unwrap();
        assert_eq!(code(&response), Some("0"));
    }
}
