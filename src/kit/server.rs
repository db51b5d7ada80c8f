//! Binding, serving and shutting down: the part of start-up both services share.
//!
//! The listener is bound first (port 0 works, and the real port is known before serving), then
//! health, reflection, authentication, logging and limits are wrapped around the service's
//! routes. Connections are guarded (and their TLS handshake done, with TLS_CERT_FILE) before
//! HTTP/2 starts (see [`super::connections`], [`super::tls`]), and health
//! and reflection never wait behind business calls (see [`super::concurrency`]). On
//! SIGTERM/SIGINT health turns NOT_SERVING first, in-flight RPCs get the drain timeout to
//! finish, and the process exits.

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;

use super::calls::CallLayer;
use super::config::{CommonConfig, parse_listen_addr};
use super::connections::{ConnectionLimits, guarded_incoming};
use super::health::Health;
use super::http_json::call::GrpcService;
use super::http_json::listener::{HttpPort, HttpPortLimits};
use super::http_json::{HttpJson, HttpJsonLimits};
use super::service_identity::ServiceAccess;
use super::tls::PeerIdentityLayer;

/// A bound, not yet serving gRPC server.
pub struct BoundServer {
    listener: TcpListener,
    addr: SocketAddr,
    access: ServiceAccess,
}

impl BoundServer {
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
        let addr = listener.local_addr()?;
        Ok(Self { listener, addr, access: ServiceAccess::default() })
    }

    /// Which RPCs our other services may call with their service identity (by default none).
    pub fn with_service_access(mut self, access: ServiceAccess) -> Self {
        self.access = access;
        self
    }

    /// The address actually bound (the real port when asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves `routes` plus health and reflection until `shutdown` resolves, then drains.
    pub async fn serve(
        self,
        name: &str,
        routes: Routes,
        health: Health,
        health_service: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
        config: &CommonConfig,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let reflection_v1 = reflection(health.services()).build_v1()?;
        let reflection_v1alpha = reflection(health.services()).build_v1alpha()?;

        // Authentication, the call's trace, log line and metrics, the business concurrency
        // limit and the reclassification of broken framing: one layer, one future per call.
        let layers = CallLayer::new(config.callers(self.access)?, config.max_concurrent_rpcs, config.rpc_timeout());

        let tls = config.server_tls()?;
        // Before the server takes its first connection: the probes must find the port open.
        let health_port = match config.health_listen_addr.as_deref().filter(|a| !a.is_empty()) {
            Some(addr) => Some(serve_health_port(addr, health_service.clone(), config).await?),
            None => None,
        };
        let routes = routes.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);
        // HTTP/JSON calls the same layers around the same routes, in process (see http_json).
        let http_port = match config.http_json.listen_addr()? {
            Some(addr) => {
                Some(start_http_port(name, addr, &health, layers.clone(), routes.clone(), tls.clone(), config).await?)
            }
            None => None,
        };
        let incoming = guarded_incoming(self.listener, config.connection_limits(), tls);
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        // No `.timeout(..)`: the call layer enforces each call's deadline, answering
        // DEADLINE_EXCEEDED (tonic's own timeout answers CANCELLED).
        let server = Server::builder()
            .http2_keepalive_interval(Some(config.http2_keepalive_interval()))
            .http2_keepalive_timeout(Some(config.http2_keepalive_timeout()))
            .max_concurrent_streams(config.max_streams_per_connection)
            // The mTLS peer's identity first, so that authentication can see it.
            .layer(PeerIdentityLayer)
            .layer(layers)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            });
        let mut server = tokio::spawn(server);

        // Announce readiness on stdout: the launcher and the tests wait for this line.
        println!("{name} listening on {}", self.addr);
        // What start-up freed is of no further use: give it back rather than sit on it.
        super::memory::release_free_heap();

        // The health port lives as long as the server: it reports NOT_SERVING while draining.
        let _health_port = health_port.map(AbortOnDrop);
        tokio::select! {
            result = &mut server => {
                return result.context("server task")?.context("server failed");
            }
            () = shutdown => {}
        }
        tracing::info!(
            drain_timeout_secs = config.drain_timeout_secs,
            "shutting down: NOT_SERVING, draining in-flight RPCs"
        );
        health.start_draining().await;
        tokio::time::sleep(config.shutdown_delay()).await;
        let _ = stop_tx.send(());
        let http_drain = http_port.map(|port| tokio::spawn(port.drain(config.drain_timeout())));
        match tokio::time::timeout(config.drain_timeout(), &mut server).await {
            Ok(result) => result.context("server task")?.context("server failed")?,
            Err(_) => {
                tracing::warn!("drain timeout reached; abandoning the RPCs still running");
                server.abort();
            }
        }
        if let Some(http_drain) = http_drain {
            let _ = http_drain.await;
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// Starts the HTTP/JSON port of `name`'s services: the same `layers` around the same `routes`
/// as the gRPC port (which enforce each call's deadline), with its TLS (ALPN http/1.1).
async fn start_http_port(
    name: &str,
    addr: SocketAddr,
    health: &Health,
    layers: CallLayer,
    routes: Routes,
    tls: Option<super::tls::ServerTls>,
    config: &CommonConfig,
) -> anyhow::Result<HttpPort> {
    let service = GrpcService::new(tower_layer::Layer::layer(&layers, routes));
    let limits =
        HttpJsonLimits { max_body_bytes: config.http_json.http_max_body_bytes, body_timeout: config.rpc_timeout() };
    let http = HttpJson::new(name, health.services(), service, limits)?;
    let port_limits = HttpPortLimits {
        max_connections: config.http_json.http_max_connections,
        header_timeout: config.connection_limits().handshake_timeout,
    };
    let port = HttpPort::start(addr, std::sync::Arc::new(http), tls, port_limits).await?;
    // Announced like the gRPC port: the launcher prints where it listens.
    println!("{name} HTTP/JSON on {} (OpenAPI at {})", port.local_addr(), super::http_json::OPENAPI_PATH);
    Ok(port)
}

/// Serves grpc.health.v1 alone, in plaintext, on `addr` (HEALTH_LISTEN_ADDR): Kubernetes' native
/// gRPC probes speak neither TLS nor mTLS, and the image has no shell for an exec probe. It
/// answers what the main port's health service answers (one reporter), and nothing else; its
/// connections are guarded like the main port's, within a small budget of their own.
async fn serve_health_port(
    addr: &str,
    health_service: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
    config: &CommonConfig,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    const HEALTH_PORT_CONNECTIONS: usize = 64;
    let addr = parse_listen_addr(addr).context("HEALTH_LISTEN_ADDR")?;
    let listener = TcpListener::bind(addr).await.with_context(|| format!("binding HEALTH_LISTEN_ADDR {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, "grpc.health.v1 in plaintext on HEALTH_LISTEN_ADDR");
    let limits = ConnectionLimits { max_connections: HEALTH_PORT_CONNECTIONS, ..config.connection_limits() };
    let incoming = guarded_incoming(listener, limits, None);
    let server = Server::builder()
        .timeout(config.rpc_timeout())
        .http2_keepalive_interval(Some(config.http2_keepalive_interval()))
        .http2_keepalive_timeout(Some(config.http2_keepalive_timeout()))
        .add_service(health_service)
        .serve_with_incoming(incoming);
    Ok(tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "the health port stopped");
        }
    }))
}

/// Stops a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reflection (v1 or v1alpha, each built from this) lists exactly what the server answers: its
/// own `services`, health and both reflection services, not every service of the contracts.
/// Beside the contracts it serves the descriptors of google.rpc.Status and the error details
/// (BadRequest, ...) that our errors carry, so that grpcurl shows them as text, not bytes.
fn reflection(services: &[&'static str]) -> tonic_reflection::server::Builder<'static> {
    const ALWAYS_SERVED: [&str; 3] =
        ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];
    let builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        // Both versions are served, so each lists (and describes) both.
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    services.iter().chain(ALWAYS_SERVED.iter()).fold(builder, |builder, name| builder.with_service_name(*name))
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C). The handlers are installed when this is called, not
/// when the future is first polled: a signal that arrives between "listening" and the first poll
/// must start a graceful shutdown, not kill the process outright.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    #[cfg(unix)]
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).ok();
    async move {
        #[cfg(unix)]
        {
            let term = async {
                match term.as_mut() {
                    Some(s) => drop(s.recv().await),
                    None => std::future::pending::<()>().await,
                }
            };
            let int = async {
                match int.as_mut() {
                    Some(s) => drop(s.recv().await),
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = term => tracing::info!("received SIGTERM"),
                () = int => tracing::info!("received SIGINT"),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("received Ctrl-C");
        }
    }
}
