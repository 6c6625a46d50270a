//! Tests of the exporter against a real OTLP trace service (the generated server) on a real socket.

use super::*;
use crate::otel::pb::collector::trace_service_server::{TraceService, TraceServiceServer};
use crate::otel::pb::collector::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use tokio_stream::wrappers::TcpListenerStream;

/// Keeps every request it is sent; rejects `reject` spans of each.
struct Collector {
    received: mpsc::UnboundedSender<ExportTraceServiceRequest>,
    reject: i64,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let _ = self.received.send(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: (self.reject > 0).then(|| ExportTracePartialSuccess {
                rejected_spans: self.reject,
                error_message: "no".into(),
            }),
        }))
    }
}

async fn collector(reject: i64) -> (String, mpsc::UnboundedReceiver<ExportTraceServiceRequest>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (received, rx) = mpsc::unbounded_channel();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector { received, reject }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), rx)
}

fn span(n: u8) -> Span {
    Span {
        trace_id: vec![n; 16],
        span_id: vec![n; 8],
        name: format!("span {n}"),
        ..Default::default()
    }
}

fn resource() -> Resource {
    Resource {
        attributes: vec![super::super::text("service.name", "test")],
        ..Default::default()
    }
}

fn counter(registry: &Registry, name: &str, reason: Option<&str>) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric())
        .filter(|m| reason.is_none_or(|r| m.get_label().iter().any(|l| l.value() == r)))
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_batched_to_the_collector_with_the_resource() {
    let (endpoint, mut received) = collector(0).await;
    let registry = Registry::new();
    let (queue, exporter) = Exporter::start(endpoint, resource(), &registry);
    queue.push(vec![span(1), span(2)]);
    queue.push(vec![span(3)]);
    let mut names = Vec::new();
    while names.len() < 3 {
        let request = tokio::time::timeout(Duration::from_secs(10), received.recv())
            .await
            .expect("the collector got the spans")
            .unwrap();
        let resource_spans = &request.resource_spans[0];
        assert_eq!(resource_spans.resource, Some(resource()));
        let scope = &resource_spans.scope_spans[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "keel");
        names.extend(scope.spans.iter().map(|s| s.name.clone()));
    }
    assert_eq!(names, ["span 1", "span 2", "span 3"]);
    exporter
        .shutdown_by(Instant::now() + Duration::from_secs(5))
        .await;
    assert_eq!(
        counter(&registry, "keel_otlp_spans_exported_total", None),
        3
    );
    assert_eq!(counter(&registry, "keel_otlp_spans_dropped_total", None), 0);
    // After shutdown nothing is queued: counted, never blocking.
    queue.push(vec![span(4)]);
    assert_eq!(
        counter(&registry, "keel_otlp_spans_dropped_total", Some("shutdown")),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_what_is_queued_at_once() {
    let (endpoint, mut received) = collector(1).await;
    let registry = Registry::new();
    let (queue, exporter) = Exporter::start(endpoint, resource(), &registry);
    queue.push((0..5).map(span).collect());
    // Well before the flush interval would have sent them.
    let started = Instant::now();
    exporter
        .shutdown_by(Instant::now() + Duration::from_secs(5))
        .await;
    assert!(started.elapsed() < FLUSH_EVERY * 3);
    let request = received.try_recv().expect("sent at shutdown");
    assert_eq!(request.resource_spans[0].scope_spans[0].spans.len(), 5);
    // The collector rejected one of them.
    assert_eq!(
        counter(&registry, "keel_otlp_spans_exported_total", None),
        4
    );
    assert_eq!(
        counter(&registry, "keel_otlp_spans_dropped_total", Some("rejected")),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_pushes_nothing_and_every_span_is_counted() {
    // Nothing listens there.
    let registry = Registry::new();
    let (queue, exporter) = Exporter::start("http://127.0.0.1:1".into(), resource(), &registry);
    let pushed = QUEUE_SPANS as u64 * 2;
    let started = std::time::Instant::now();
    for i in 0..pushed {
        queue.push(vec![span(i as u8)]);
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "pushing never waits"
    );
    let failed = || {
        counter(
            &registry,
            "keel_otlp_spans_dropped_total",
            Some("export_failed"),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while failed() == 0 {
        assert!(Instant::now() < deadline, "no failed export counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    exporter
        .shutdown_by(Instant::now() + Duration::from_secs(5))
        .await;
    assert_eq!(
        counter(&registry, "keel_otlp_spans_exported_total", None),
        0
    );
    assert_eq!(
        counter(&registry, "keel_otlp_spans_dropped_total", None),
        pushed
    );
    assert!(
        counter(
            &registry,
            "keel_otlp_spans_dropped_total",
            Some("queue_full")
        ) > 0
    );
}
