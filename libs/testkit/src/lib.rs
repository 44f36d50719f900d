//! Test kit: starts real services on an ephemeral port, on the embedded
//! backend (SQLite files in a fresh directory, in-process cache) or on real
//! PostgreSQL (a fresh database per server) and Redis.
//!
//! PostgreSQL and Redis come from `COLEND_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and `COLEND_TEST_REDIS_URL`
//! (default `redis://127.0.0.1:6379`). When they cannot be reached the test
//! fails; it never skips.
pub mod proxy;

/// `n` distinct free loopback ports: all are held until every one is chosen.
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("bound").port())
        .collect()
}
pub mod rpc;

use colend_platform::config::Backends;
use colend_platform::runner::{Registered, serve_registered};
use colend_platform::{Endpoints, Mesh};
use sqlx::Connection;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::transport::Channel;
use tonic_types::StatusExt;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite files and the in-process cache.
    Embedded,
    /// PostgreSQL and Redis.
    Production,
}

pub const BOTH: [Backend; 2] = [Backend::Embedded, Backend::Production];

fn pg_admin_url() -> String {
    std::env::var("COLEND_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("COLEND_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Creates a fresh, empty PostgreSQL database and returns its URL.
pub async fn fresh_postgres() -> String {
    sqlx::any::install_default_drivers();
    let admin = pg_admin_url();
    let mut conn = sqlx::AnyConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is required for this test and is not reachable at {admin}: {e}")
        });
    let name = format!("colend_t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("creating a test database");
    conn.close().await.ok();
    match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("COLEND_TEST_DATABASE_URL must end in /<database>"),
    }
}

/// Drops a database made by `fresh_postgres` (best effort).
pub async fn drop_database(url: &str) {
    if let Some((_, name)) = url.rsplit_once('/')
        && let Ok(mut conn) = sqlx::AnyConnection::connect(&pg_admin_url()).await
    {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
}

/// Checks that Redis answers, failing the test when it does not.
pub async fn require_redis() -> String {
    let url = redis_url();
    let client = redis::Client::open(url.as_str()).expect("valid REDIS URL");
    let mut conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .unwrap_or_else(|_| panic!("Redis is required for this test and timed out at {url}"))
    .unwrap_or_else(|e| {
        panic!("Redis is required for this test and is not reachable at {url}: {e}")
    });
    let pong: String = redis::cmd("PING")
        .query_async(&mut conn)
        .await
        .expect("Redis PING");
    assert_eq!(pong, "PONG");
    url
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(format!("colend-test-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&p).expect("creating a temp dir");
        TempDir(p)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Backends for a new test server. Each server gets its own cache
/// namespace, so tests sharing one Redis never see each other's keys.
pub async fn backends(backend: Backend, dir: &TempDir) -> Backends {
    let cache_prefix = format!("colend-test-{}:", uuid::Uuid::new_v4().simple());
    match backend {
        Backend::Embedded => Backends {
            database_url: None,
            redis_url: None,
            data_dir: dir.0.clone(),
            cache_prefix,
        },
        Backend::Production => Backends {
            database_url: Some(fresh_postgres().await),
            redis_url: Some(require_redis().await),
            data_dir: dir.0.clone(),
            cache_prefix,
        },
    }
}

/// A running server; stopped (gracefully, bounded) on drop.
pub struct TestServer {
    pub endpoint: String,
    pub channel: Channel,
    pub backends: Backends,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _dir: TempDir,
}

impl TestServer {
    /// Starts the services `build` registers on 127.0.0.1:0.
    pub async fn start<F, Fut>(backend: Backend, build: F) -> TestServer
    where
        F: FnOnce(Mesh) -> Fut,
        Fut: Future<Output = anyhow::Result<Vec<Registered>>>,
    {
        let dir = TempDir::new();
        let b = backends(backend, &dir).await;
        Self::start_with(b, dir, build).await
    }

    /// Starts on the given backends.
    pub async fn start_with<F, Fut>(b: Backends, dir: TempDir, build: F) -> TestServer
    where
        F: FnOnce(Mesh) -> Fut,
        Fut: Future<Output = anyhow::Result<Vec<Registered>>>,
    {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding port 0");
        let endpoint = format!("http://{}", listener.local_addr().expect("address"));
        let mesh = Mesh::from_env(b.clone(), Endpoints::all_at(&endpoint)).expect("mesh");
        let services = build(mesh).await.expect("services start");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(serve_registered(
            listener,
            services,
            async {
                rx.await.ok();
            },
            Duration::from_secs(5),
        ));
        let channel = colend_platform::grpc::channel(&endpoint).expect("channel");
        TestServer {
            endpoint,
            channel,
            backends: b,
            stop: Some(tx),
            handle: Some(handle),
            _dir: dir,
        }
    }

    /// Stops the server, waits for it, and drops its test database.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            tx.send(()).ok();
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
        if let Some(url) = &self.backends.database_url {
            drop_database(url).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            tx.send(()).ok();
        }
    }
}

/// A request as a partner would send it.
pub fn as_partner<T>(partner: &str, message: T) -> tonic::Request<T> {
    let mut r = colend_platform::grpc::request(message, Duration::from_secs(10), Some(partner));
    colend_platform::auth::sign_request(
        &mut r,
        colend_platform::auth::Class::Partner,
        Some(partner),
        partner,
    );
    r
}

/// A request as the bank core would send it.
pub fn as_bank<T>(message: T) -> tonic::Request<T> {
    let mut r = colend_platform::grpc::request(message, Duration::from_secs(10), None);
    colend_platform::auth::sign_request(
        &mut r,
        colend_platform::auth::Class::Bank,
        None,
        "bank-core",
    );
    r
}

/// A request as another colend service makes it, on behalf of `partner`
/// (acquisition calling kyc, credit or funding).
pub fn as_service<T>(partner: &str, message: T) -> tonic::Request<T> {
    colend_platform::grpc::request(message, Duration::from_secs(10), Some(partner))
}

/// A request as another colend service makes it, for no partner.
pub fn as_internal<T>(message: T) -> tonic::Request<T> {
    colend_platform::grpc::request(message, Duration::from_secs(10), None)
}

/// A request with no credentials at all.
pub fn anonymous<T>(message: T) -> tonic::Request<T> {
    let mut r = colend_platform::grpc::request(message, Duration::from_secs(10), None);
    r.metadata_mut().remove("authorization");
    r
}

/// The ErrorInfo reason of a status.
pub fn reason(s: &tonic::Status) -> String {
    s.get_error_details()
        .error_info()
        .map(|i| i.reason.clone())
        .unwrap_or_default()
}

/// The fields named in a status's BadRequest.
pub fn violated_fields(s: &tonic::Status) -> Vec<String> {
    s.get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|f| f.field.clone()).collect())
        .unwrap_or_default()
}

/// Asserts the health status of `service` is SERVING.
pub async fn assert_serving(channel: Channel, service: &str) {
    use tonic_health::pb::{
        HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
    };
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(
        r.status,
        ServingStatus::Serving as i32,
        "{service} is not SERVING"
    );
}

/// The services server reflection lists.
pub async fn reflected_services(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .expect("reflection")
        .into_inner();
    let resp = stream
        .message()
        .await
        .expect("reflection answer")
        .expect("one answer");
    match resp.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

/// A value of a status's ErrorInfo metadata.
pub fn error_metadata(s: &tonic::Status, key: &str) -> Option<String> {
    s.get_error_details()
        .error_info()
        .and_then(|i| i.metadata.get(key).cloned())
}
