//! Acquisition: where a partner brings a borrower. Validates and records the
//! application with the borrower's consent, refuses a borrower already in
//! flight with the same partner, and drives the loan's journey: KYC, the
//! bank's credit decision, funding. Partners follow it with Get and Watch.
pub mod app;
pub mod domain;
pub mod grpc;
pub mod journey;

use colend_platform::Mesh;
use colend_platform::runner::Registered;

pub const SERVICE: &str = "colend.acquisition.v1.AcquisitionService";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// This service's database (migrated when `COLEND_MIGRATE_ON_START` allows),
/// for tools such as `colend audit verify`.
pub async fn connect(
    backends: &colend_platform::config::Backends,
) -> anyhow::Result<colend_platform::Db> {
    colend_platform::Db::connect(backends, "acquisition", &MIGRATOR).await
}

/// Runs this service's migrations (a Kubernetes migration Job).
pub async fn migrate(backends: &colend_platform::config::Backends) -> anyhow::Result<()> {
    colend_platform::Db::migrate(backends, "acquisition", &MIGRATOR).await
}

/// Connects storage, starts the journey sweeper (which resumes unfinished
/// journeys) and the outbox relay, and returns the service.
pub async fn register(mesh: Mesh) -> anyhow::Result<Registered> {
    register_with(mesh, journey::Config::from_env()?).await
}

/// [`register`], with the journeys run as `config` says.
pub async fn register_with(mesh: Mesh, config: journey::Config) -> anyhow::Result<Registered> {
    let db = colend_platform::Db::connect(&mesh.backends, "acquisition", &MIGRATOR).await?;
    colend_platform::audit::register(SERVICE, &db);
    colend_platform::idempotency::spawn_retention(&db)?;
    let journey = journey::Journey::with_config(db.clone(), &mesh, config)?;
    let app = app::Acquisition::new(
        db,
        mesh.blind_key.clone(),
        mesh.sealer.clone(),
        journey.clone(),
    );
    journey.spawn_workers(&mesh.workers)?;
    let server = grpc::server(app);
    Ok(Registered::new(SERVICE, move |routes| {
        routes.add_service(server);
    })
    .with_workers(&mesh.workers))
}
