//! Reconciliation: matches the bank's and the partner's records of a business
//! day, classifies every difference, and nets the day's settlement.
pub mod app;
pub mod domain;
pub mod grpc;

use colend_platform::Mesh;
use colend_platform::runner::Registered;

pub const SERVICE: &str = "colend.reconciliation.v1.ReconciliationService";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// This service's database (migrated when `COLEND_MIGRATE_ON_START` allows),
/// for tools such as `colend audit verify`.
pub async fn connect(
    backends: &colend_platform::config::Backends,
) -> anyhow::Result<colend_platform::Db> {
    colend_platform::Db::connect(backends, "reconciliation", &MIGRATOR).await
}

/// Runs this service's migrations (a Kubernetes migration Job).
pub async fn migrate(backends: &colend_platform::config::Backends) -> anyhow::Result<()> {
    colend_platform::Db::migrate(backends, "reconciliation", &MIGRATOR).await
}

pub async fn register(mesh: Mesh) -> anyhow::Result<Registered> {
    register_with(mesh, app::Settings::from_env()?).await
}

/// `register` with the settings given rather than read from the environment.
pub async fn register_with(mesh: Mesh, settings: app::Settings) -> anyhow::Result<Registered> {
    let db = colend_platform::Db::connect(&mesh.backends, "reconciliation", &MIGRATOR).await?;
    colend_platform::audit::register(SERVICE, &db);
    colend_platform::idempotency::spawn_retention(&db)?;
    let ledger = app::FundingLedger::new(
        colend_platform::grpc::traced_channel(&mesh.endpoints.funding)?,
        mesh.call_timeout,
    );
    let server = grpc::server(app::Reconciliation::new(db, Some(ledger), settings));
    Ok(Registered::new(SERVICE, move |routes| {
        routes.add_service(server);
    }))
}
