//! Credit: the bank's own, independent decision (rule C5). Hard rules with
//! reason codes, a points scorecard giving a probability of default and a
//! grade, the approved amount and term, and a cost-plus price that must fit
//! under the all-in annual cost cap.
pub mod app;
pub mod domain;
pub mod grpc;

use colend_platform::Mesh;
use colend_platform::runner::Registered;

pub const SERVICE: &str = "colend.credit.v1.CreditService";

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// This service's database (migrated when `COLEND_MIGRATE_ON_START` allows),
/// for tools such as `colend audit verify`.
pub async fn connect(
    backends: &colend_platform::config::Backends,
) -> anyhow::Result<colend_platform::Db> {
    colend_platform::Db::connect(backends, "credit", &MIGRATOR).await
}

/// Runs this service's migrations (a Kubernetes migration Job).
pub async fn migrate(backends: &colend_platform::config::Backends) -> anyhow::Result<()> {
    colend_platform::Db::migrate(backends, "credit", &MIGRATOR).await
}

/// Connects storage, runs migrations, publishes the configured default
/// policy when none exists, and returns the service ready to serve.
pub async fn register(mesh: Mesh) -> anyhow::Result<Registered> {
    let db = colend_platform::Db::connect(&mesh.backends, "credit", &MIGRATOR).await?;
    colend_platform::audit::register(SERVICE, &db);
    colend_platform::idempotency::spawn_retention(&db)?;
    let app = app::Credit::new(db, mesh.cache.clone());
    app.ensure_policy(domain::Policy::from_env()?).await?;
    let server = grpc::server(app);
    Ok(Registered::new(SERVICE, move |routes| {
        routes.add_service(server);
    }))
}
