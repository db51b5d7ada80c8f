//! The HTTP/JSON port (HTTP_LISTEN_ADDR): HTTP/1.1 with keep-alive, in plaintext or with the
//! gRPC port's TLS (and mTLS) settings, guarded like the gRPC port:
//!
//! - at most HTTP_MAX_CONNECTIONS connections at once; beyond, a new one is closed as soon as it
//!   is accepted, so a flood of sockets cannot starve the connections being served;
//! - the TLS handshake, and then each request's headers, must arrive within
//!   HTTP2_HANDSHAKE_TIMEOUT_SECS, so a socket that never speaks is not held open;
//! - on shutdown the port stops accepting, each connection finishes its request in flight and
//!   closes (graceful), and what still runs after the drain timeout is dropped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tonic::transport::server::TcpConnectInfo;

use super::HttpJson;
use crate::kit::tls::{PeerIdentity, ServerTls};

/// The limits of the port.
#[derive(Debug, Clone, Copy)]
pub struct HttpPortLimits {
    pub max_connections: usize,
    /// For the TLS handshake, then for each request's headers.
    pub header_timeout: Duration,
}

/// A serving HTTP/JSON port.
pub struct HttpPort {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    connections: Arc<Semaphore>,
    max_connections: usize,
    accept_task: tokio::task::JoinHandle<()>,
}

impl HttpPort {
    /// Binds `addr` and serves `http` on it until [`Self::drain`].
    pub async fn start(
        addr: SocketAddr,
        http: Arc<HttpJson>,
        tls: Option<ServerTls>,
        limits: HttpPortLimits,
    ) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(addr).await.with_context(|| format!("binding HTTP_LISTEN_ADDR {addr}"))?;
        let addr = listener.local_addr()?;
        // Browsers and curl negotiate HTTP/1.1 by ALPN; h2 is the gRPC port's.
        let tls = tls.map(|tls| tls.with_alpn(&[b"http/1.1"]));
        let (stop, stopped) = watch::channel(false);
        let max_connections = limits.max_connections.max(1);
        let connections = Arc::new(Semaphore::new(max_connections));
        let accept_task = tokio::spawn(accept_loop(listener, http, tls, limits, connections.clone(), stopped));
        Ok(Self { addr, stop, connections, max_connections, accept_task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets each connection finish its request in flight, and waits for them
    /// at most `timeout`.
    pub async fn drain(mut self, timeout: Duration) {
        let _ = self.stop.send(true);
        let _ = (&mut self.accept_task).await;
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        if tokio::time::timeout(timeout, self.connections.acquire_many(all)).await.is_err() {
            tracing::warn!("HTTP/JSON drain timeout reached; abandoning the requests still running");
        }
    }
}

impl Drop for HttpPort {
    /// A port dropped without a drain (the gRPC server failed) stops accepting at once.
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    http: Arc<HttpJson>,
    tls: Option<ServerTls>,
    limits: HttpPortLimits,
    connections: Arc<Semaphore>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut last_refusal_log: Option<std::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            _ = stopped.changed() => return,
            accepted = listener.accept() => accepted,
        };
        let (stream, remote) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting an HTTP connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            if last_refusal_log.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(max_connections = limits.max_connections, "HTTP_MAX_CONNECTIONS reached: refusing");
                last_refusal_log = Some(std::time::Instant::now());
            }
            metrics::counter!("http_json_connections_refused_total").increment(1);
            let _ = stream.set_zero_linger();
            continue;
        };
        let _ = stream.set_nodelay(true);
        let tcp = TcpConnectInfo { local_addr: stream.local_addr().ok(), remote_addr: Some(remote) };
        let http = http.clone();
        let tls = tls.clone();
        let stopped = stopped.clone();
        tokio::spawn(async move {
            match tls {
                None => serve_connection(stream, None, tcp, http, limits, stopped, permit).await,
                Some(tls) => match tokio::time::timeout(limits.header_timeout, tls.accept(stream)).await {
                    Ok(Ok((stream, peer))) => serve_connection(stream, peer, tcp, http, limits, stopped, permit).await,
                    Ok(Err(e)) => tracing::debug!(peer = %remote, error = %e, "HTTP/JSON TLS handshake failed"),
                    Err(_) => tracing::debug!(peer = %remote, "HTTP/JSON TLS handshake timed out"),
                },
            }
        });
    }
}

async fn serve_connection<I>(
    io: I,
    peer: Option<PeerIdentity>,
    tcp: TcpConnectInfo,
    http: Arc<HttpJson>,
    limits: HttpPortLimits,
    mut stopped: watch::Receiver<bool>,
    _permit: OwnedSemaphorePermit,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
        let http = http.clone();
        let peer = peer.clone();
        let tcp = tcp.clone();
        async move { Ok::<_, std::convert::Infallible>(http.handle(request, peer, tcp).await) }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = stopped.changed() => {
            // Finish the request in flight (if any), then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP/JSON connection ended with an error");
    }
}
