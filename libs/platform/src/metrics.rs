//! Prometheus metrics: a scrape endpoint per process (`COLEND_METRICS_LISTEN`),
//! RPC durations by service, method and status code, and the services'
//! business counters (recorded with the `metrics` macros where they happen).
//!
//! Metric names:
//! - `rpc_server_duration_seconds` (histogram; `rpc_service`, `rpc_method`, `rpc_grpc_status_code`)
//! - `colend_applications_total` (`status`): applications reaching each status
//! - `colend_reservations_total` (`result`): funding reservations, `reserved` or the limit hit
//! - `colend_funded_minor_total` (`funder`, `currency`): principal disbursed per funder
//! - `colend_outbox_pending`, `colend_outbox_lag_seconds`, `colend_outbox_dead_letters` (gauges;
//!   `outbox`: the service): events not yet delivered, the oldest one's wait, dead letters now;
//!   `colend_outbox_delivered_total`, `colend_outbox_failures_total`,
//!   `colend_outbox_dead_lettered_total` (see [`crate::outbox`])
//! - `colend_recon_items_total` (`class`): reconciled transactions by class
//! - `colend_journeys_parked_total`: journeys parked on a technical failure (status PARKED)
//! - `colend_journeys_parked` (gauge): journeys parked now, waiting for an operator
//! - `colend_journey_retries_total`: journey steps retried after a technical failure
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

const SECONDS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Installs the Prometheus recorder and its scrape endpoint when
/// `COLEND_METRICS_LISTEN` is set (once per process; later calls do nothing).
pub fn install_from_env() -> anyhow::Result<()> {
    let Some(addr) = crate::config::env_opt("COLEND_METRICS_LISTEN") else {
        return Ok(());
    };
    let addr: std::net::SocketAddr = addr
        .parse()
        .map_err(|e| anyhow::anyhow!("COLEND_METRICS_LISTEN={addr:?} is not an address: {e}"))?;
    let result = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)?
        .with_http_listener(addr)
        .install();
    if let Err(e) = result {
        tracing::warn!(error = %e, "metrics recorder not installed (already installed?)");
    }
    Ok(())
}

/// Records one RPC's duration (called by the server layer in `crate::rpc_trace`).
pub fn record_rpc(service: &str, method: &str, code: i64, seconds: f64) {
    metrics::histogram!(
        "rpc_server_duration_seconds",
        "rpc_service" => service.to_string(),
        "rpc_method" => method.to_string(),
        "rpc_grpc_status_code" => code.to_string()
    )
    .record(seconds);
}
