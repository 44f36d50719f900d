//! The `colend` command: the embedded mesh, single services, and the demo.
pub mod borrowers;
pub mod demo;

use colend_platform::config::Backends;
use colend_platform::runner::{Registered, serve_registered};
use colend_platform::{Endpoints, Mesh};
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

/// The five services by the names `colend serve` takes.
pub const SERVICES: [&str; 5] = ["acquisition", "kyc", "credit", "funding", "reconciliation"];

/// Registers one service by name.
pub async fn register(name: &str, mesh: Mesh) -> anyhow::Result<Registered> {
    match name {
        "acquisition" => colend_acquisition::register(mesh).await,
        "kyc" => colend_kyc::register(mesh).await,
        "credit" => colend_credit::register(mesh).await,
        "funding" => colend_funding::register(mesh).await,
        "reconciliation" => colend_reconciliation::register(mesh).await,
        other => anyhow::bail!("unknown service {other:?}; one of {}", SERVICES.join(", ")),
    }
}

/// The address services use to call each other when they share a listener.
pub fn self_address(listener: &TcpListener) -> anyhow::Result<String> {
    let a = listener.local_addr()?;
    let host = if a.ip().is_unspecified() {
        if a.is_ipv6() {
            "[::1]".to_string()
        } else {
            "127.0.0.1".to_string()
        }
    } else if a.is_ipv6() {
        format!("[{}]", a.ip())
    } else {
        a.ip().to_string()
    };
    Ok(format!("http://{host}:{}", a.port()))
}

/// Connects and migrates all five services for one listener.
pub async fn build_mesh(
    listener: &TcpListener,
    backends: Backends,
) -> anyhow::Result<Vec<Registered>> {
    let mesh = Mesh::from_env(backends, Endpoints::all_at(&self_address(listener)?))?;
    let mut services = Vec::new();
    for name in SERVICES {
        services.push(register(name, mesh.clone()).await?);
    }
    Ok(services)
}

/// Runs all five services on one listener until `shutdown`.
pub async fn run_mesh(
    listener: TcpListener,
    backends: Backends,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> anyhow::Result<()> {
    let services = build_mesh(&listener, backends).await?;
    serve_registered(listener, services, shutdown, grace).await
}
