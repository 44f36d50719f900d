//! The `colend` command: the embedded mesh, single services, and the demo.
pub mod accrue;
pub mod bench;
pub mod borrowers;
pub mod demo;
pub mod invariants;
pub mod outbox;
pub mod recon;

use colend_platform::config::Backends;
use colend_platform::runner::{Registered, serve_registered};
use colend_platform::{Endpoints, Mesh};
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;

/// The gRPC names of the five services.
pub const SERVICE_NAMES: [&str; 5] = [
    colend_acquisition::SERVICE,
    colend_kyc::SERVICE,
    colend_credit::SERVICE,
    colend_funding::SERVICE,
    colend_reconciliation::SERVICE,
];

/// Prints each service's health at `endpoint`; fails unless all are SERVING
/// (waiting up to `wait_secs` for them).
pub async fn health(endpoint: &str, services: Vec<String>, wait_secs: u64) -> anyhow::Result<()> {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let names: Vec<String> = if services.is_empty() {
        SERVICE_NAMES.iter().map(|s| s.to_string()).collect()
    } else {
        services
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(wait_secs);
    let client = HealthClient::new(colend_platform::grpc::channel(endpoint)?);
    loop {
        let mut report = Vec::new();
        for n in &names {
            let req = colend_platform::grpc::request(
                HealthCheckRequest { service: n.clone() },
                Duration::from_secs(2),
                None,
            );
            let status = match client.clone().check(req).await {
                Ok(r) => ServingStatus::try_from(r.into_inner().status)
                    .map(|s| s.as_str_name().to_string())
                    .unwrap_or_else(|_| "UNKNOWN".into()),
                Err(e) => format!("UNREACHABLE ({})", e.code()),
            };
            report.push((n.clone(), status));
        }
        let all = report.iter().all(|(_, s)| s == "SERVING");
        if all || std::time::Instant::now() >= deadline {
            for (n, s) in &report {
                println!("{n}: {s}");
            }
            if all {
                return Ok(());
            }
            anyhow::bail!("not every service is SERVING at {endpoint}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The services `name` selects: one of [`SERVICES`], or all five for "all".
fn selected(name: &str) -> anyhow::Result<Vec<&'static str>> {
    if name == "all" {
        return Ok(SERVICES.to_vec());
    }
    SERVICES
        .iter()
        .find(|s| **s == name)
        .map(|s| vec![*s])
        .ok_or_else(|| {
            anyhow::anyhow!(
                "unknown service {name:?}; one of {} or all",
                SERVICES.join(", ")
            )
        })
}

/// Verifies each named service's audit chain (or all); one line per
/// service. Fails, with every line, when a chain is broken.
pub async fn audit_verify(name: &str, backends: &Backends) -> anyhow::Result<Vec<String>> {
    use colend_platform::audit::{Verdict, verify};
    let mut report = Vec::new();
    let mut broken = false;
    for n in selected(name)? {
        // Verifying reads an existing chain: storage that is not there is
        // refused, never created (or migrated) by connecting to it.
        let db = colend_platform::Db::open_existing(backends, n)
            .await
            .map_err(|e| anyhow::anyhow!("{n}: {e}"))?;
        report.push(
            match verify(&db).await.map_err(|e| anyhow::anyhow!("{n}: {e}"))? {
                Verdict::Intact(rows) => format!("{n}: audit chain intact, {rows} rows"),
                Verdict::Broken { seq, why } => {
                    broken = true;
                    format!("{n}: audit chain broken at row {seq}: {why}")
                }
            },
        );
    }
    anyhow::ensure!(!broken, "{}", report.join("\n"));
    Ok(report)
}

/// Runs one service's migrations (or all five for "all") and returns.
pub async fn migrate(name: &str, backends: &Backends) -> anyhow::Result<()> {
    for n in selected(name)? {
        match n {
            "acquisition" => colend_acquisition::migrate(backends).await?,
            "kyc" => colend_kyc::migrate(backends).await?,
            "credit" => colend_credit::migrate(backends).await?,
            "funding" => colend_funding::migrate(backends).await?,
            _ => colend_reconciliation::migrate(backends).await?,
        }
        tracing::info!(service = n, "migrations applied");
    }
    Ok(())
}

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
    register_all(mesh).await
}

/// Registers all five services on one mesh (what `colend up` and the
/// cross-service tests serve).
pub async fn register_all(mesh: Mesh) -> anyhow::Result<Vec<Registered>> {
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
