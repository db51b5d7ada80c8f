//! The TCP connections the gRPC server takes, guarded below HTTP/2:
//!
//! - at most `max_connections` are open at once (MAX_CONNECTIONS). Beyond that a new connection
//!   is closed as soon as it is accepted (a reset), so that a flood of sockets cannot take the
//!   file descriptors and memory the connections already open need: they keep being served;
//! - a new connection must send the HTTP/2 client preface within `handshake_timeout`
//!   (HTTP2_HANDSHAKE_TIMEOUT_SECS), or it is closed. hyper waits for the preface forever, and
//!   its keepalive pings only start once HTTP/2 runs, so without this a socket that never
//!   speaks would be held open for good. With TLS ([`ServerTls`]), the TLS handshake and then
//!   the preface inside it must both be done within that one timeout. Each connection does its
//!   handshake in a task of its own: a slow one never delays the others.
//!
//! Once HTTP/2 runs, its keepalive pings (HTTP2_KEEPALIVE_INTERVAL_SECS, _TIMEOUT_SECS) close
//! peers that stopped answering, and MAX_STREAMS_PER_CONNECTION bounds the streams of each.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use super::tls::{ConnectionInfo, PeerIdentity, ServerTls};

/// What every HTTP/2 client sends first (RFC 9113, section 3.4).
const HTTP2_PREFACE_LEN: usize = 24;

/// Bounds on the connections the server holds.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Most connections open at once; more are refused.
    pub max_connections: usize,
    /// How long a new connection has to send the HTTP/2 client preface.
    pub handshake_timeout: Duration,
}

/// Accepts connections on `listener` within `limits`, and yields those that sent their HTTP/2
/// preface (after a TLS handshake, with `tls`), for `serve_with_incoming`. The listener closes
/// when the stream is dropped (the server stops accepting on shutdown).
pub fn guarded_incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<ServerTls>,
) -> impl futures::Stream<Item = io::Result<GuardedConnection>> + Send + 'static {
    let soft_limit = std::fs::read_to_string("/proc/self/limits").ok().and_then(|l| soft_open_file_limit(&l));
    let max_connections = fit_to_open_file_limit(limits.max_connections, soft_limit);
    if max_connections < limits.max_connections {
        tracing::warn!(
            configured = limits.max_connections,
            open_file_limit = soft_limit,
            max_connections,
            "MAX_CONNECTIONS does not fit in the open-file limit (ulimit -n): lowered; raise the limit to allow more"
        );
    }
    let limits = ConnectionLimits { max_connections, ..limits };
    let (ready_tx, ready_rx) = mpsc::channel(64);
    tokio::spawn(accept_loop(listener, limits, tls, ready_tx));
    futures::stream::unfold(ready_rx, |mut ready| async move { ready.recv().await.map(|next| (next, ready)) })
}

/// File descriptors kept apart from client connections: database pool, Langflow, listener,
/// logs, metrics.
const RESERVED_FILE_DESCRIPTORS: u64 = 128;

/// MAX_CONNECTIONS, lowered to what the process's open-file limit (`ulimit -n`) leaves after
/// [`RESERVED_FILE_DESCRIPTORS`]. Above that the cap would never be reached: accepting would
/// fail for lack of descriptors first, and so would the database's and Langflow's new
/// connections, starving the calls already in flight.
fn fit_to_open_file_limit(max_connections: usize, soft_limit: Option<u64>) -> usize {
    match soft_limit {
        Some(limit) if (max_connections as u64).saturating_add(RESERVED_FILE_DESCRIPTORS) > limit => {
            usize::try_from(limit.saturating_sub(RESERVED_FILE_DESCRIPTORS)).unwrap_or(max_connections).max(1)
        }
        _ => max_connections,
    }
}

/// The soft limit of "Max open files" in the text of /proc/<pid>/limits (None if unlimited).
fn soft_open_file_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find_map(|line| line.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

async fn accept_loop(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<ServerTls>,
    ready: mpsc::Sender<io::Result<GuardedConnection>>,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut refusals = RefusalLog::default();
    loop {
        let accepted = tokio::select! {
            () = ready.closed() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors (EMFILE) and the like: wait a little rather than spin.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refusals.record(limits.max_connections);
            // A reset rather than a graceful close: the socket is gone at once, without TIME_WAIT.
            let _ = stream.set_zero_linger();
            continue;
        };
        let slot = ConnectionSlot::take(permit);
        let _ = stream.set_nodelay(true);
        let ready = ready.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let tcp = stream.connect_info();
            match tokio::time::timeout(limits.handshake_timeout, handshake(stream, tls)).await {
                Ok(Ok((stream, peer, preface))) => {
                    let connection = GuardedConnection {
                        stream,
                        preface: Bytes::from(preface),
                        info: ConnectionInfo { tcp, peer },
                        _slot: slot,
                    };
                    // Fails only when the server no longer accepts: the connection is then dropped.
                    let _ = ready.send(Ok(connection)).await;
                }
                Ok(Err(e)) => tracing::debug!(
                    peer = ?tcp.remote_addr(),
                    error = %e,
                    "connection closed before its HTTP/2 preface (or failed its TLS handshake)"
                ),
                Err(_) => tracing::debug!(
                    peer = ?tcp.remote_addr(),
                    "no HTTP/2 preface within HTTP2_HANDSHAKE_TIMEOUT_SECS: closing the connection"
                ),
            }
        });
    }
}

/// The TLS handshake, when the server speaks TLS, then the HTTP/2 preface (read, to be replayed).
async fn handshake(
    stream: TcpStream,
    tls: Option<ServerTls>,
) -> io::Result<(ServerStream, Option<PeerIdentity>, Vec<u8>)> {
    let (mut stream, peer) = match tls {
        Some(tls) => {
            let (stream, peer) = tls.accept(stream).await?;
            (ServerStream::Tls(Box::new(stream)), peer)
        }
        None => (ServerStream::Plain(stream), None),
    };
    let mut preface = vec![0; HTTP2_PREFACE_LEN];
    stream.read_exact(&mut preface).await?;
    Ok((stream, peer, preface))
}

/// A place under MAX_CONNECTIONS, held from accept until the connection is closed, and counted
/// in `grpc_server_connections`.
struct ConnectionSlot {
    _permit: OwnedSemaphorePermit,
}

impl ConnectionSlot {
    fn take(permit: OwnedSemaphorePermit) -> Self {
        metrics::gauge!("grpc_server_connections").increment(1.0);
        Self { _permit: permit }
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        metrics::gauge!("grpc_server_connections").decrement(1.0);
    }
}

/// Counts refused connections (`grpc_server_connections_refused_total`) and says so in the log
/// at most every 10 s, so that a flood does not flood the log too.
#[derive(Default)]
struct RefusalLog {
    unlogged: u64,
    last_logged: Option<std::time::Instant>,
}

impl RefusalLog {
    fn record(&mut self, max_connections: usize) {
        metrics::counter!("grpc_server_connections_refused_total").increment(1);
        self.unlogged += 1;
        if self.last_logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            tracing::warn!(
                max_connections,
                refused = self.unlogged,
                "MAX_CONNECTIONS reached: refusing new connections"
            );
            self.unlogged = 0;
            self.last_logged = Some(std::time::Instant::now());
        }
    }
}

/// An accepted connection that sent its HTTP/2 preface. The preface bytes, already read, are
/// read again first, so that hyper sees the connection from its start. It holds its place
/// under MAX_CONNECTIONS until dropped (closed).
pub struct GuardedConnection {
    stream: ServerStream,
    preface: Bytes,
    info: ConnectionInfo,
    _slot: ConnectionSlot,
}

impl Connected for GuardedConnection {
    type ConnectInfo = ConnectionInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl AsyncRead for GuardedConnection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.preface.has_remaining() {
            let n = self.preface.remaining().min(buf.remaining());
            buf.put_slice(&self.preface[..n]);
            self.preface.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for GuardedConnection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A connection's bytes: plain TCP, or TLS over it (boxed: a TLS session is large).
enum ServerStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for ServerStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ServerStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Self::Plain(s) => s.is_write_vectored(),
            Self::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63448                63448                processes \n\
                      Max open files            1024                 1048576              files     \n";
        assert_eq!(soft_open_file_limit(limits), Some(1024));
        assert_eq!(
            soft_open_file_limit("Max open files            unlimited            unlimited            files"),
            None
        );
        assert_eq!(soft_open_file_limit(""), None);
    }

    #[test]
    fn max_connections_leaves_room_for_the_other_descriptors() {
        assert_eq!(fit_to_open_file_limit(10_000, Some(1_048_576)), 10_000);
        assert_eq!(fit_to_open_file_limit(10_000, None), 10_000);
        assert_eq!(fit_to_open_file_limit(10_000, Some(1024)), 1024 - RESERVED_FILE_DESCRIPTORS as usize);
        assert_eq!(fit_to_open_file_limit(100, Some(1024)), 100);
        assert_eq!(fit_to_open_file_limit(100, Some(64)), 1);
    }
}
