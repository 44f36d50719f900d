//! The gRPC server stack and outbound clients.
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tonic::service::RoutesBuilder;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::server::HealthReporter;

/// Names of the services a process serves, for health.
pub type ServiceNames = Vec<&'static str>;

/// Serves `routes` plus grpc.health.v1 and server reflection (v1 and
/// v1alpha) on `listener` (and health alone on `health_listener`) until `shutdown` resolves; then reports
/// NOT_SERVING, stops accepting, and waits at most `grace` for calls in
/// flight.
pub async fn serve(
    (listener, health_listener): (TcpListener, Option<TcpListener>),
    mut routes: RoutesBuilder,
    health: HealthReporter,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    names: ServiceNames,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> anyhow::Result<()> {
    // Health alone on a plain port of its own, for Kubernetes gRPC probes
    // (which cannot speak TLS); it stops after the main port has drained.
    let (health_stop, health_stopped) = tokio::sync::oneshot::channel::<()>();
    let health_task = health_listener.map(|l| {
        let svc = health_service.clone();
        tokio::spawn(
            Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(incoming(l), async {
                    health_stopped.await.ok();
                }),
        )
    });
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(colend_contracts::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(colend_contracts::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    routes.add_service(health_service);
    // Reflection helps a developer with grpcurl; the production
    // configuration turns it off (COLEND_REFLECTION=false).
    if crate::config::env_parse("COLEND_REFLECTION", true)? {
        routes
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);
    }
    for n in &names {
        health
            .set_service_status(*n, tonic_health::ServingStatus::Serving)
            .await;
    }
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let incoming = incoming(listener);
    let mut server = tokio::spawn(
        Server::builder()
            .layer(crate::rpc_trace::ServerTraceLayer)
            .layer(crate::auth::AuthLayer)
            // Innermost: a request over the service's size limit is
            // RESOURCE_EXHAUSTED / REQUEST_TOO_LARGE, as traced and logged.
            .layer(crate::request_size::RequestSizeLayer)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            // Streams of large batches (reconciliation files) are not held
            // back by HTTP/2's 64 KiB default windows.
            .initial_stream_window_size(Some(STREAM_WINDOW))
            .initial_connection_window_size(Some(CONNECTION_WINDOW))
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(incoming, async {
                stop_rx.await.ok();
            }),
    );
    tokio::select! {
        r = &mut server => {
            return r.map_err(anyhow::Error::from)?.map_err(anyhow::Error::from);
        }
        _ = shutdown => {}
    }
    tracing::info!("shutting down: health NOT_SERVING, draining");
    for n in names.iter().copied().chain([""]) {
        health
            .set_service_status(n, tonic_health::ServingStatus::NotServing)
            .await;
    }
    stop_tx.send(()).ok();
    let drained = match tokio::time::timeout(grace, &mut server).await {
        Ok(r) => r.map_err(anyhow::Error::from)?.map_err(anyhow::Error::from),
        Err(_) => {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "drain bound reached; stopping"
            );
            server.abort();
            Ok(())
        }
    };
    health_stop.send(()).ok();
    if let Some(t) = health_task {
        let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
    }
    drained
}

/// Accepted connections with Nagle's algorithm off. (The server's own
/// `tcp_nodelay` applies only to sockets it binds itself: without this,
/// small replies wait for the client's delayed ACK, about 40 ms.)
fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        tokio::signal::ctrl_c().await.ok();
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// A lazily connecting channel to another colend service.
pub fn channel(url: &str) -> anyhow::Result<Channel> {
    let url = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    Ok(Endpoint::from_shared(url.clone())
        .map_err(|e| anyhow::anyhow!("invalid service address {url:?}: {e}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(Some(STREAM_WINDOW))
        .initial_connection_window_size(Some(CONNECTION_WINDOW))
        .connect_lazy())
}

/// Largest request a service decodes (reconciliation's batches excepted);
/// a larger one is answered RESOURCE_EXHAUSTED with ErrorInfo
/// REQUEST_TOO_LARGE and `max_bytes` ([`crate::request_size`]).
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;
/// Largest response a service encodes.
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// HTTP/2 flow-control windows of every server and channel.
pub const STREAM_WINDOW: u32 = 4 << 20;
pub const CONNECTION_WINDOW: u32 = 8 << 20;

/// A channel whose calls carry the caller's trace context, each in a client span.
pub type TracedChannel = crate::rpc_trace::ClientTrace<Channel>;

/// `channel`, traced.
pub fn traced_channel(url: &str) -> anyhow::Result<TracedChannel> {
    Ok(crate::rpc_trace::ClientTrace::new(channel(url)?))
}

/// An outbound request with a deadline (sent as the `grpc-timeout` header)
/// and, when given, the partner on whose behalf the call is made.
pub fn request<T>(message: T, timeout: Duration, partner_id: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    // Never longer than what is left of the deadline of the call being served.
    req.set_timeout(crate::deadline::bounded(timeout));
    // As a colend service; tools acting as a partner or the bank re-sign
    // with `auth::sign_request`.
    let token = crate::auth::authority().internal_token();
    req.metadata_mut()
        .insert("authorization", crate::auth::bearer(&token));
    if let Some(p) = partner_id
        && let Ok(v) = p.parse()
    {
        req.metadata_mut().insert(crate::caller::PARTNER_HEADER, v);
    }
    req
}
