//! Funding: splits each approved loan between the bank and the partner under
//! the partner's agreement (rule C1), reserves the partner's quota
//! atomically, books disbursements and repayments, and keeps a double-entry
//! ledger per funder.
pub mod app;
pub mod domain;
pub mod grpc;

use colend_platform::Mesh;
use colend_platform::runner::Registered;

pub const SERVICE: &str = "colend.funding.v1.FundingService";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// This service's database (migrated when `COLEND_MIGRATE_ON_START` allows),
/// for tools such as `colend audit verify`.
pub async fn connect(
    backends: &colend_platform::config::Backends,
) -> anyhow::Result<colend_platform::Db> {
    colend_platform::Db::connect(backends, "funding", &MIGRATOR).await
}

/// Runs this service's migrations (a Kubernetes migration Job).
pub async fn migrate(backends: &colend_platform::config::Backends) -> anyhow::Result<()> {
    colend_platform::Db::migrate(backends, "funding", &MIGRATOR).await
}

pub async fn register(mesh: Mesh) -> anyhow::Result<Registered> {
    register_with(mesh, app::Settings::from_env()?).await
}

/// `register` with the settings given rather than read from the environment.
pub async fn register_with(mesh: Mesh, settings: app::Settings) -> anyhow::Result<Registered> {
    let db = colend_platform::Db::connect(&mesh.backends, "funding", &MIGRATOR).await?;
    colend_platform::audit::register(SERVICE, &db);
    colend_platform::idempotency::spawn_retention(&db)?;
    let acquisition = colend_platform::grpc::channel(&mesh.endpoints.acquisition)?;
    let app = app::Funding::new(
        db,
        mesh.cache.clone(),
        acquisition,
        mesh.call_timeout,
        settings,
    );
    app.spawn_sweeper(&mesh.workers);
    app.spawn_daily_accrual(&mesh.workers);
    app.spawn_relay(&mesh.workers)?;
    let server = grpc::server(app);
    Ok(Registered::new(SERVICE, move |routes| {
        routes.add_service(server);
    })
    .with_workers(&mesh.workers))
}
