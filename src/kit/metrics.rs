//! Prometheus metrics, served on their own port (METRICS_ADDR) so that scraping never competes
//! with gRPC traffic and needs no credentials.
//!
//! What both services record: `grpc_server_requests_total` and
//! `grpc_server_request_duration_seconds` by method and code (from the RPC log layer), and
//! `db_pool_connections` by state (from the health probe). agent-service adds its own
//! (Langflow calls, runs, reviews) with the `metrics` macros.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// Latency buckets, in seconds: sub-millisecond RPCs to minute-long Langflow runs.
const BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Whether [`install`] installed the recorder: without one, [`record_rpc`] does not build the
/// labels of a sample that nothing would keep.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Installs the global recorder and serves `/metrics` on `addr`.
pub fn install(addr: SocketAddr) -> anyhow::Result<()> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
        .context("metrics buckets")?
        .install()
        .with_context(|| format!("serving metrics on {addr}"))?;
    INSTALLED.store(true, Ordering::Relaxed);
    tracing::info!(%addr, "Prometheus metrics on http://{addr}/metrics");
    Ok(())
}

/// Records one finished RPC; `code` is the code's name (`NotFound`).
pub fn record_rpc(method: &str, code: &'static str, seconds: f64) {
    if !INSTALLED.load(Ordering::Relaxed) {
        return;
    }
    let labels = [metrics::Label::new("method", method.to_owned()), metrics::Label::from_static_parts("code", code)];
    metrics::counter!("grpc_server_requests_total", labels.iter()).increment(1);
    metrics::histogram!("grpc_server_request_duration_seconds", labels.iter()).record(seconds);
}

/// Records the state of a connection pool.
pub fn record_pool(size: u32, idle: usize) {
    let idle = idle as f64;
    metrics::gauge!("db_pool_connections", "state" => "idle").set(idle);
    metrics::gauge!("db_pool_connections", "state" => "in_use").set((f64::from(size) - idle).max(0.0));
}
