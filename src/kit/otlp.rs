//! Exporting spans over OTLP/gRPC, by the OpenTelemetry conventions: `OTEL_EXPORTER_OTLP_ENDPOINT`
//! turns it on, `OTEL_SERVICE_NAME` names the service (default: its own name), and the batch
//! processor's `OTEL_BSP_*` variables tune the queue (read by the OpenTelemetry SDK itself).
//!
//! Without an endpoint nothing is installed: no tracer, no exporter, no thread, and the spans of
//! [`super::trace`] record nothing. With one, ended spans go to a bounded queue (a full queue
//! drops them, counted and reported by the SDK at shutdown; a call never waits for it), and a
//! thread of the SDK's exports them in batches over the workspace's own tonic. What is queued is
//! exported when the process stops ([`Traces::shutdown`]).

use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// The settings of trace export, with the standard OpenTelemetry names.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TraceExportConfig {
    /// OTLP/gRPC collector to export spans to (`http://collector:4317`); unset: no spans are
    /// recorded or exported.
    #[arg(long = "otel-exporter-otlp-endpoint", env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// The OTLP protocol: `grpc` (the only one served).
    #[arg(long = "otel-exporter-otlp-protocol", env = "OTEL_EXPORTER_OTLP_PROTOCOL", value_enum, default_value_t = OtlpProtocol::Grpc)]
    pub otlp_protocol: OtlpProtocol,
    /// `service.name` of the exported spans; unset: the service's own name.
    #[arg(long = "otel-service-name", env = "OTEL_SERVICE_NAME")]
    pub service_name: Option<String>,
}

/// How spans are sent to the collector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (port 4317 by convention).
    #[default]
    Grpc,
}

/// How long [`Traces::shutdown`] waits for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// The span exporter, when one runs: shut it down on the way out so that queued spans are sent.
#[must_use = "dropping it loses the spans still queued"]
pub struct Traces {
    provider: Option<SdkTracerProvider>,
}

impl Traces {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is queued and stops the exporter (waiting at most a few seconds: a collector
    /// that is down must not hold the process).
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else { return };
        // The SDK's shutdown blocks its caller until its thread has exported.
        let flushed = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, flushed).await {
            Ok(Ok(Ok(()))) => tracing::info!("traces flushed"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "flushing traces failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "flushing traces failed"),
            Err(_) => tracing::warn!(timeout_secs = SHUTDOWN_TIMEOUT.as_secs(), "flushing traces timed out"),
        }
    }
}

/// Starts exporting spans when `config` names an endpoint (call it inside the Tokio runtime);
/// `service_name` is the default `service.name`. Without an endpoint, installs nothing.
pub fn init(config: &TraceExportConfig, service_name: &str) -> anyhow::Result<Traces> {
    let Some(endpoint) = config.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) else {
        return Ok(Traces { provider: None });
    };
    let endpoint = check_endpoint(endpoint)?;
    let service_name = config.service_name.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| service_name.to_owned());
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .context("OTEL_EXPORTER_OTLP_ENDPOINT: building the OTLP exporter")?;
    let resource = opentelemetry_sdk::Resource::builder().with_service_name(service_name.clone()).build();
    // The batch processor: a bounded queue (OTEL_BSP_MAX_QUEUE_SIZE) that drops when full, and a
    // thread of its own that exports every OTEL_BSP_SCHEDULE_DELAY or full batch.
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_id_generator(super::trace::Ids)
        .with_resource(resource)
        .build();
    if !super::trace::install(provider.tracer("engarde")) {
        // A second init in one process (tests): the first exporter stays.
        let _ = provider.shutdown();
        return Ok(Traces { provider: None });
    }
    tracing::info!(endpoint, service_name, "exporting traces over OTLP/gRPC");
    Ok(Traces { provider: Some(provider) })
}

/// The endpoint as the exporter takes it: an `http://` URL (TLS to the collector is not
/// built in: run the collector beside the service, or in the cluster).
fn check_endpoint(endpoint: &str) -> anyhow::Result<&str> {
    let uri: http::Uri =
        endpoint.parse().with_context(|| format!("OTEL_EXPORTER_OTLP_ENDPOINT {endpoint:?} is not a URL"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http"), Some(_)) => Ok(endpoint),
        (Some("https"), _) => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_ENDPOINT {endpoint:?}: https is not supported; reach the collector over http:// \
             (beside the service or inside the cluster)"
        ),
        _ => anyhow::bail!("OTEL_EXPORTER_OTLP_ENDPOINT {endpoint:?} must be an http:// URL with a host"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_an_endpoint_nothing_is_installed() {
        let traces = init(&TraceExportConfig::default(), "test-service").unwrap();
        assert!(!traces.exporting());
        let blank = TraceExportConfig { otlp_endpoint: Some(String::new()), ..Default::default() };
        assert!(!init(&blank, "test-service").unwrap().exporting());
        assert!(!super::super::trace::recording());
        // A span made now records nothing, and an outgoing call still carries the trace.
        let root = super::super::trace::TraceContext::new_root();
        let span = super::super::trace::scope(root, async {
            let span = super::super::trace::Span::client(|| "call".into(), Vec::new);
            assert_eq!(span.traceparent(), Some(root.header()));
            span
        })
        .await;
        assert!(!span.is_recorded());
        assert!(!super::super::trace::Span::db("sqlite", "workflows.get").is_recorded());
        traces.shutdown().await;
    }

    #[test]
    fn endpoints_are_http_urls() {
        assert!(check_endpoint("http://collector:4317").is_ok());
        assert!(check_endpoint("http://127.0.0.1:4317/").is_ok());
        for bad in ["collector:4317", "https://collector:4317", "not a url", "ftp://x"] {
            assert!(check_endpoint(bad).is_err(), "{bad}");
        }
    }
}
