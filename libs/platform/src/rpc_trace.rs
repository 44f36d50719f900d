//! Spans (and, on the server, duration metrics) for every gRPC call, named
//! and attributed by the OpenTelemetry RPC
//! semantic conventions (`rpc.system`, `rpc.service`, `rpc.method`,
//! `rpc.grpc.status_code`), with the W3C trace context carried in metadata:
//! extracted on the server, injected by the client.
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::header::HeaderValue::from_str(&value),
        ) {
            self.0.insert(k, v);
        }
    }
}

fn split(path: &str) -> (String, String) {
    let p = path.trim_start_matches('/');
    let (s, m) = p.split_once('/').unwrap_or((p, ""));
    (s.to_string(), m.to_string())
}

/// The gRPC status of a response: errors travel as trailers-only responses
/// with `grpc-status` in the headers; a response without it is a success so far.
fn status_code<RB, E>(res: &Result<http::Response<RB>, E>) -> i64 {
    match res {
        Ok(r) => r
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0),
        Err(_) => 2,
    }
}

/// Records the span's trace and span ids as fields, for JSON logs.
fn record_ids(span: &tracing::Span) {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    if sc.is_valid() {
        span.record("trace_id", tracing::field::display(sc.trace_id()));
        span.record("span_id", tracing::field::display(sc.span_id()));
    }
}

/// Server side: a span per call, child of the caller's context, and the
/// call's duration by method and status code.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerTraceLayer;

impl<S> tower::Layer<S> for ServerTraceLayer {
    type Service = ServerTrace<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ServerTrace { inner }
    }
}

#[derive(Clone, Debug)]
pub struct ServerTrace<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<http::Request<B>> for ServerTrace<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (service, method) = split(req.uri().path());
        let started = std::time::Instant::now();
        // Health probes and reflection are timed but not traced.
        if service.starts_with("grpc.") {
            let fut = self.inner.call(req);
            return Box::pin(async move {
                let res = fut.await;
                crate::metrics::record_rpc(
                    &service,
                    &method,
                    status_code(&res),
                    started.elapsed().as_secs_f64(),
                );
                res
            });
        }
        let parent = opentelemetry::global::get_text_map_propagator(|p| {
            p.extract(&HeaderExtractor(req.headers()))
        });
        let span = tracing::info_span!(
            "grpc.server",
            otel.name = %format!("{service}/{method}"),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            rpc.grpc.status_code = tracing::field::Empty,
            rpc.grpc.timeout_ms = tracing::field::Empty,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        );
        // The caller's deadline, as it arrived (it bounds the calls this one makes).
        if let Some(t) = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::deadline::parse_grpc_timeout)
        {
            span.record("rpc.grpc.timeout_ms", t.as_millis() as i64);
        }
        let _ = span.set_parent(parent);
        record_ids(&span);
        let fut = {
            let _entered = span.enter();
            self.inner.call(req)
        };
        let recorder = span.clone();
        Box::pin(
            async move {
                let res = fut.await;
                let code = status_code(&res);
                recorder.record("rpc.grpc.status_code", code);
                crate::metrics::record_rpc(
                    &service,
                    &method,
                    code,
                    started.elapsed().as_secs_f64(),
                );
                res
            }
            .instrument(span),
        )
    }
}

/// Client side: a span per call, whose context travels in the request's metadata.
#[derive(Clone, Debug)]
pub struct ClientTrace<S> {
    inner: S,
}

impl<S> ClientTrace<S> {
    pub fn new(inner: S) -> Self {
        ClientTrace { inner }
    }
}

impl<S, B, RB> tower::Service<http::Request<B>> for ClientTrace<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let (service, method) = split(req.uri().path());
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = %format!("{service}/{method}"),
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
        );
        let cx = span.context();
        opentelemetry::global::get_text_map_propagator(|p| {
            p.inject_context(&cx, &mut HeaderInjector(req.headers_mut()))
        });
        let fut = self.inner.call(req);
        Box::pin(fut.instrument(span))
    }
}
