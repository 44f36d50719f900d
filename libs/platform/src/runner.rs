//! Running services: one per process (a pod) or several on one address.
use crate::config::{Backends, env_or, env_parse};
use crate::mesh::{Endpoints, Mesh};
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;

/// A service ready to serve: its gRPC name and how to add it to a router.
pub struct Registered {
    pub name: &'static str,
    pub add: Box<dyn FnOnce(&mut RoutesBuilder) + Send>,
    /// Background workers to stop once the server has drained.
    pub workers: Option<crate::lifecycle::Workers>,
}

impl Registered {
    /// `Registered::new(NAME, |routes| { routes.add_service(server); })`
    pub fn new(name: &'static str, add: impl FnOnce(&mut RoutesBuilder) + Send + 'static) -> Self {
        Registered {
            name,
            add: Box::new(add),
            workers: None,
        }
    }

    /// The service runs background workers (outbox relays, sweepers): they
    /// are told to stop, and awaited within the drain bound, at shutdown.
    pub fn with_workers(mut self, workers: &crate::lifecycle::Workers) -> Self {
        self.workers = Some(workers.clone());
        self
    }
}

/// Drain bound on shutdown (`COLEND_SHUTDOWN_GRACE_MS`, default 10000).
pub fn grace() -> anyhow::Result<Duration> {
    Ok(Duration::from_millis(env_parse(
        "COLEND_SHUTDOWN_GRACE_MS",
        10_000u64,
    )?))
}

/// The plain health port, when `COLEND_HEALTH_LISTEN` is set.
pub async fn health_listener() -> anyhow::Result<Option<TcpListener>> {
    match crate::config::env_opt("COLEND_HEALTH_LISTEN") {
        None => Ok(None),
        Some(addr) => Ok(Some(TcpListener::bind(&addr).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on {addr} (COLEND_HEALTH_LISTEN): {e}")
        })?)),
    }
}

/// Serves the registered services, health and reflection on `listener`
/// (and health alone on the `COLEND_HEALTH_LISTEN` port when it is set).
pub async fn serve_registered(
    listener: TcpListener,
    services: Vec<Registered>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> anyhow::Result<()> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let mut routes = RoutesBuilder::default();
    let names = services.iter().map(|s| s.name).collect();
    let mut workers: Vec<crate::lifecycle::Workers> = Vec::new();
    for s in services {
        if let Some(w) = &s.workers
            && !workers.iter().any(|x| x.same(w))
        {
            workers.push(w.clone());
        }
        (s.add)(&mut routes);
    }
    let served = crate::grpc::serve(
        (listener, health_listener().await?),
        routes,
        reporter,
        health_service,
        names,
        shutdown,
        grace,
    )
    .await;
    // Health is NOT_SERVING and calls have drained: the workers finish the
    // batch in hand and stop.
    for w in workers {
        w.stop(grace).await;
    }
    served
}

/// Runs one service as its own process: what a Kubernetes pod runs.
/// Listens on `COLEND_LISTEN` (default `0.0.0.0:50051`); storage from
/// `DATABASE_URL` / `COLEND_DATA_DIR`; the other services' addresses from
/// `COLEND_<SERVICE>_URL`.
pub async fn run_single<F, Fut>(service: &str, register: F) -> anyhow::Result<()>
where
    F: FnOnce(Mesh) -> Fut,
    Fut: Future<Output = anyhow::Result<Registered>>,
{
    run_single_with(
        service,
        &env_or("COLEND_LISTEN", "0.0.0.0:50051"),
        Backends::from_env(),
        register,
    )
    .await
}

/// `run_single` with the address and storage given.
pub async fn run_single_with<F, Fut>(
    service: &str,
    listen: &str,
    backends: Backends,
    register: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Mesh) -> Fut,
    Fut: Future<Output = anyhow::Result<Registered>>,
{
    let _telemetry = crate::telemetry::init(service);
    crate::metrics::install_from_env()?;
    crate::auth::init(backends.database_url.is_some())?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let port = listener.local_addr()?.port();
    let mesh = Mesh::from_env(
        backends,
        Endpoints::from_env(&format!("http://127.0.0.1:{port}")),
    )?;
    let registered = register(mesh).await?;
    tracing::info!(service, address = %listener.local_addr()?, "serving");
    serve_registered(
        listener,
        vec![registered],
        crate::grpc::shutdown_signal(),
        grace()?,
    )
    .await
}
