//! One trace per journey across all five services: an OTLP gRPC receiver
//! runs in this process, telemetry exports to it, a demo drives journeys
//! through the mesh, and the spans received must put all five services under
//! single trace ids with every server span's parent being its caller's
//! client span.
use colend::demo::{DemoArgs, execute};
use colend_testkit::{Backend, TestServer};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Span>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            for ss in rs.scope_spans {
                spans.extend(ss.spans);
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes.iter().find(|a| a.key == key).and_then(|a| {
        match a.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_all_five_services() {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let svc = TraceServiceServer::new(receiver.clone());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream_listener(listener)),
    );
    let telemetry =
        colend_platform::telemetry::init_with("colend-test", Some(format!("http://{addr}")));

    // Services would give each outbound call 30 s: the caller's deadline
    // must cut that down (checked on reconciliation → funding below).
    // SAFETY: set before any service reads it; this binary runs one test.
    unsafe { std::env::set_var("COLEND_CALL_TIMEOUT_MS", "30000") };
    let s = TestServer::start(Backend::Embedded, colend::register_all).await;
    let args = DemoArgs {
        endpoint: s.endpoint.clone(),
        kyc_endpoint: None,
        funding_endpoint: None,
        reconciliation_endpoint: None,
        applications: 4,
        json: true,
        partner: None,
        concurrency: 2,
        seed: Some(1),
        partner_share_bps: 3_000,
    };
    let sum = execute(&args).await.expect("demo runs");
    assert_eq!(sum.errors, 0, "{:?}", sum.error_samples);
    assert!(sum.funded.loans > 0);

    // Export everything, then wait for the receiver to have it.
    let mut spans = Vec::new();
    for _ in 0..50 {
        telemetry.flush();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        spans = receiver.0.lock().unwrap().clone();
        if !spans.is_empty() {
            break;
        }
    }
    // Deadline propagation: the demo gives RunReconciliation 10 s; the call
    // reconciliation makes to funding carries what is left of it, not 30 s.
    let timeout = |sp: &Span| attr(sp, "rpc.grpc.timeout_ms").and_then(|v| v.parse::<i64>().ok());
    let ledger_calls: Vec<&Span> = spans
        .iter()
        .filter(|sp| sp.kind == 2 && sp.name.ends_with("/StreamLedgerMovements"))
        .collect();
    assert!(!ledger_calls.is_empty(), "reconciliation called funding");
    for sp in &ledger_calls {
        let t = timeout(sp).expect("the call to funding carries a deadline");
        assert!(
            t > 0 && t <= 10_000,
            "funding got {t} ms: the caller's 10 s deadline was not propagated"
        );
    }
    eprintln!(
        "deadline propagated: reconciliation → funding carried {:?} ms of the caller's 10000 ms (own timeout 30000 ms)",
        ledger_calls
            .iter()
            .filter_map(|sp| timeout(sp))
            .collect::<Vec<_>>()
    );
    let by_id: HashMap<Vec<u8>, &Span> = spans.iter().map(|sp| (sp.span_id.clone(), sp)).collect();
    let mut services_by_trace: HashMap<Vec<u8>, HashSet<String>> = HashMap::new();
    for sp in &spans {
        if sp.kind == 2
            && let Some(service) = attr(sp, "rpc.service")
        {
            services_by_trace
                .entry(sp.trace_id.clone())
                .or_default()
                .insert(service);
        }
    }
    let all_five: Vec<&Vec<u8>> = services_by_trace
        .iter()
        .filter(|(_, svcs)| {
            [
                "colend.acquisition.v1.AcquisitionService",
                "colend.kyc.v1.KycService",
                "colend.credit.v1.CreditService",
                "colend.funding.v1.FundingService",
                "colend.reconciliation.v1.ReconciliationService",
            ]
            .iter()
            .all(|n| svcs.contains(*n))
        })
        .map(|(t, _)| t)
        .collect();
    assert!(
        !all_five.is_empty(),
        "no trace spans all five services: {services_by_trace:?}"
    );
    let in_trace: Vec<&Span> = spans
        .iter()
        .filter(|sp| &sp.trace_id == all_five[0])
        .collect();
    eprintln!(
        "{} spans received; {} traces span all five services; the first has {} spans: {} server, {} client, {} db/cache",
        spans.len(),
        all_five.len(),
        in_trace.len(),
        in_trace.iter().filter(|s| s.kind == 2).count(),
        in_trace
            .iter()
            .filter(|s| s.kind == 3 && s.name.contains('/'))
            .count(),
        in_trace
            .iter()
            .filter(|s| s.name.starts_with("db.") || s.name.starts_with("cache."))
            .count(),
    );
    // Parent links: every server span of such a trace hangs under a client span of the same trace.
    for sp in spans
        .iter()
        .filter(|sp| &sp.trace_id == all_five[0] && sp.kind == 2)
    {
        let parent = by_id
            .get(&sp.parent_span_id)
            .unwrap_or_else(|| panic!("server span {} has no parent", sp.name));
        assert_eq!(parent.trace_id, sp.trace_id);
        assert_eq!(
            parent.kind, 3,
            "the parent of {} is the caller's client span",
            sp.name
        );
        assert_eq!(attr(parent, "rpc.method"), attr(sp, "rpc.method"));
    }
    s.stop().await;
}

fn tokio_stream_listener(
    l: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(l)
}
