//! Logging and tracing set-up.
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Flushes telemetry when dropped.
pub struct TelemetryGuard;

/// Initialises structured logging. `RUST_LOG` filters (default `info`);
/// `COLEND_LOG_FORMAT=json` writes JSON lines. Safe to call more than once.
pub fn init(service: &str) -> TelemetryGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = crate::config::env_or("COLEND_LOG_FORMAT", "text") == "json";
    let registry = tracing_subscriber::registry().with(filter);
    let result = if json {
        registry
            .with(
                fmt::layer()
                    .json()
                    .with_current_span(true)
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
    TelemetryGuard
}
