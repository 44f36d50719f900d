//! Logging and tracing.
//!
//! Logs go to standard error (`COLEND_LOG_FORMAT=json` for JSON lines, which
//! carry the current span's fields, `trace_id` and `span_id` among them).
//! Traces are exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; the W3C trace context is
//! carried in gRPC metadata on every hop (see `crate::tracing_layers`).
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Flushes and shuts the trace exporter down when dropped.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Exports every finished span now.
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
        }
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Initialises logging and, when the standard `OTEL_*` variables ask for it,
/// OTLP trace export. Call inside the tokio runtime. Safe to call more than once.
pub fn init(service: &str) -> TelemetryGuard {
    let endpoint = crate::config::env_opt("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| crate::config::env_opt("OTEL_EXPORTER_OTLP_ENDPOINT"));
    let disabled = crate::config::env_opt("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none")
        || crate::config::env_opt("OTEL_SDK_DISABLED").is_some_and(|v| v == "true");
    init_with(service, if disabled { None } else { endpoint })
}

/// `init` with the OTLP endpoint given (`None`: no export).
pub fn init_with(service: &str, otlp_endpoint: Option<String>) -> TelemetryGuard {
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    let name = crate::config::env_opt("OTEL_SERVICE_NAME").unwrap_or_else(|| service.to_string());
    let provider = otlp_endpoint.and_then(|ep| {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(ep)
            .build()
            .map_err(|e| eprintln!("OTLP trace export is off: {e}"))
            .ok()?;
        // The batch processor runs on the tokio runtime: the tonic exporter needs one.
        let processor = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
        Some(
            SdkTracerProvider::builder()
                .with_span_processor(processor)
                .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(name).build())
                .build(),
        )
    });
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("colend")));
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = crate::config::env_or("COLEND_LOG_FORMAT", "text") == "json";
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    let result = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(true)
                    .with_writer(std::io::stderr),
            )
            .try_init()
    } else {
        registry
            .with(fmt::layer().with_target(false).with_writer(std::io::stderr))
            .try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "telemetry initialised");
    }
    TelemetryGuard { provider }
}
