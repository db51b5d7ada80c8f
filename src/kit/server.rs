//! Binding, serving and shutting down: the part of start-up both services share.
//!
//! The listener is bound first (port 0 works, and the real port is known before serving), then
//! health, reflection, authentication, logging and limits are wrapped around the service's
//! routes. Connections are guarded before HTTP/2 starts (see [`super::connections`]), and health
//! and reflection never wait behind business calls (see [`super::concurrency`]). On
//! SIGTERM/SIGINT health turns NOT_SERVING first, in-flight RPCs get the drain timeout to
//! finish, and the process exits.

use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::Server;

use super::calls::CallLayer;
use super::config::CommonConfig;
use super::connections::guarded_incoming;
use super::health::Health;
use super::service_identity::ServiceAccess;

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
        let routes = routes.add_service(health_service).add_service(reflection_v1).add_service(reflection_v1alpha);

        // Authentication, the call's trace, log line and metrics, the business concurrency
        // limit and the reclassification of broken framing: one layer, one future per call.
        let layers = CallLayer::new(config.callers(self.access)?, config.max_concurrent_rpcs);

        let incoming = guarded_incoming(self.listener, config.connection_limits());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = Server::builder()
            .timeout(config.rpc_timeout())
            .http2_keepalive_interval(Some(config.http2_keepalive_interval()))
            .http2_keepalive_timeout(Some(config.http2_keepalive_timeout()))
            .max_concurrent_streams(config.max_streams_per_connection)
            .layer(layers)
            .add_routes(routes)
            .serve_with_incoming_shutdown(incoming, async {
                let _ = stop_rx.await;
            });
        let mut server = tokio::spawn(server);

        // Announce readiness on stdout: the launcher and the tests wait for this line.
        println!("{name} listening on {}", self.addr);

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
        match tokio::time::timeout(config.drain_timeout(), &mut server).await {
            Ok(result) => result.context("server task")?.context("server failed")?,
            Err(_) => {
                tracing::warn!("drain timeout reached; abandoning the RPCs still running");
                server.abort();
            }
        }
        tracing::info!("stopped");
        Ok(())
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
