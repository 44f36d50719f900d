//! KYC: who the borrower is. Resident ID and credit code checks, age and
//! region from the ID, watchlist screening with fuzzy name matching, and
//! results served from cache for repeated checks within a window.
pub mod app;
pub mod domain;
pub mod grpc;

use colend_platform::Mesh;
use colend_platform::runner::Registered;

/// The service's name in health and configuration.
pub const SERVICE: &str = "colend.kyc.v1.KycService";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// This service's database (migrated when `COLEND_MIGRATE_ON_START` allows),
/// for tools such as `colend audit verify`.
pub async fn connect(
    backends: &colend_platform::config::Backends,
) -> anyhow::Result<colend_platform::Db> {
    colend_platform::Db::connect(backends, "kyc", &MIGRATOR).await
}

/// Runs this service's migrations (a Kubernetes migration Job).
pub async fn migrate(backends: &colend_platform::config::Backends) -> anyhow::Result<()> {
    colend_platform::Db::migrate(backends, "kyc", &MIGRATOR).await
}

/// Connects storage, runs migrations, and returns the service ready to serve.
pub async fn register(mesh: Mesh) -> anyhow::Result<Registered> {
    let db = colend_platform::Db::connect(&mesh.backends, "kyc", &MIGRATOR).await?;
    colend_platform::audit::register(SERVICE, &db);
    colend_platform::idempotency::spawn_retention(&db)?;
    let app = app::Kyc::new(
        db,
        mesh.cache.clone(),
        mesh.blind_key.clone(),
        app::Settings::from_env()?,
    );
    app.refresh_watchlist().await?;
    app.spawn_refresher();
    let server = grpc::server(app);
    Ok(Registered::new(SERVICE, move |routes| {
        routes.add_service(server);
    }))
}
