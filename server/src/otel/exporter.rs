//! The OTLP/gRPC exporter: finished spans wait in a bounded queue that requests never wait on, and one
//! task sends them to the collector's `TraceService/Export` in batches (every second, or at
//! [`BATCH_SPANS`]). A collector that is down or slow costs requests nothing: the queue fills, further
//! spans are dropped and counted (`keel_otlp_spans_dropped_total{reason}`), the task retries with
//! backoff (the channel reconnects by itself), and the outage is logged at most once a minute.
//!
//! On shutdown the task sends what is queued within the server's shutdown deadline; spans it could not
//! send by then are counted as `shutdown`.

use std::time::Duration;

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::transport::Endpoint;

use super::pb::collector::ExportTraceServiceRequest;
use super::pb::collector::trace_service_client::TraceServiceClient;
use super::pb::common::InstrumentationScope;
use super::pb::resource::Resource;
use super::pb::trace::{ResourceSpans, ScopeSpans, Span};
use keel_monitor::backoff::Backoff;
use keel_monitor::outbound::redact_url;

/// Spans waiting for the exporter (three per traced request): beyond this they are dropped.
pub const QUEUE_SPANS: usize = 4096;
/// Most spans in one export; a full batch goes at once.
pub const BATCH_SPANS: usize = 512;
/// How long a span may wait for its batch to fill.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A collector that stays down is logged again after this long, not at every failed export.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The exporter's counters, with their label values resolved once.
#[derive(Clone)]
struct Counters {
    exported: IntCounter,
    queue_full: IntCounter,
    export_failed: IntCounter,
    rejected: IntCounter,
    shutdown: IntCounter,
}

impl Counters {
    fn new(registry: &Registry) -> Self {
        let exported = IntCounter::new(
            "keel_otlp_spans_exported_total",
            "Spans the OTLP collector accepted.",
        )
        .expect("valid counter");
        let dropped = IntCounterVec::new(
            Opts::new(
                "keel_otlp_spans_dropped_total",
                "Spans not exported, by reason (queue_full, export_failed, rejected, shutdown).",
            ),
            &["reason"],
        )
        .expect("valid counter");
        for metric in [
            Box::new(exported.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(dropped.clone()),
        ] {
            // Registered once per server; a second tracer on the same registry keeps the first's.
            let _ = registry.register(metric);
        }
        let reason = |r: &str| dropped.with_label_values(&[r]);
        Counters {
            exported,
            queue_full: reason("queue_full"),
            export_failed: reason("export_failed"),
            rejected: reason("rejected"),
            shutdown: reason("shutdown"),
        }
    }
}

/// The sending side, shared by every request's span.
pub struct Queue {
    tx: mpsc::Sender<Span>,
    counters: Counters,
}

impl Queue {
    /// Queues `spans` without waiting; those that do not fit are dropped and counted.
    pub fn push(&self, spans: Vec<Span>) {
        for span in spans {
            match self.tx.try_send(span) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => self.counters.queue_full.inc(),
                Err(mpsc::error::TrySendError::Closed(_)) => self.counters.shutdown.inc(),
            }
        }
    }

    #[cfg(test)]
    pub fn for_tests(capacity: usize) -> (Self, mpsc::Receiver<Span>) {
        let (tx, rx) = mpsc::channel(capacity);
        let counters = Counters::new(&Registry::new());
        (Queue { tx, counters }, rx)
    }
}

/// The export task; [`Exporter::shutdown_by`] flushes it.
pub struct Exporter {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Exporter {
    /// Starts the export task on the current runtime. `endpoint` was checked by the configuration (an
    /// `http://` URL); nothing connects until the first batch.
    pub fn start(endpoint: String, resource: Resource, registry: &Registry) -> (Queue, Exporter) {
        let counters = Counters::new(registry);
        let (tx, rx) = mpsc::channel(QUEUE_SPANS);
        let (stop, stopped) = watch::channel(false);
        let waiting = Waiting {
            rx,
            shutdown: counters.shutdown.clone(),
        };
        let task = tokio::spawn(run(endpoint, resource, waiting, stopped, counters.clone()));
        (Queue { tx, counters }, Exporter { stop, task })
    }

    /// Sends what is queued, by `deadline`; what is left then is counted as dropped (`shutdown`).
    pub async fn shutdown_by(self, deadline: Instant) {
        let _ = self.stop.send(true);
        let mut task = self.task;
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
            let _ = task.await;
        }
    }
}

/// The queue's receiving end; spans still in it when the task ends are counted as `shutdown`.
struct Waiting {
    rx: mpsc::Receiver<Span>,
    shutdown: IntCounter,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.rx.close();
        while self.rx.try_recv().is_ok() {
            self.shutdown.inc();
        }
    }
}

/// The spans of an export on the wire: counted as `shutdown` if the task is stopped before the
/// collector answers.
struct InFlight {
    spans: u64,
    shutdown: IntCounter,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shutdown.inc_by(self.spans);
    }
}

async fn run(
    endpoint: String,
    resource: Resource,
    mut waiting: Waiting,
    mut stop: watch::Receiver<bool>,
    counters: Counters,
) {
    let shown = redact_url(&endpoint);
    let channel = match Endpoint::from_shared(endpoint) {
        Ok(endpoint) => endpoint
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(EXPORT_TIMEOUT)
            .connect_lazy(),
        Err(e) => {
            tracing::error!(endpoint = %shown, error = %e, "cannot export spans to this OTLP endpoint");
            return;
        }
    };
    let mut client = TraceServiceClient::new(channel);
    let scope = InstrumentationScope {
        name: "keel".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        ..Default::default()
    };
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let mut warned: Option<Instant> = None;
    let mut failing = false;
    let mut stopping = false;
    while let Some(spans) = next_batch(&mut waiting.rx, &mut stop, &mut stopping).await {
        let mut in_flight = InFlight {
            spans: spans.len() as u64,
            shutdown: counters.shutdown.clone(),
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope.clone()),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let result = client.export(request).await;
        // Answered, one way or the other: no longer the shutdown's to count.
        let sent = std::mem::take(&mut in_flight.spans);
        drop(in_flight);
        match result {
            Ok(response) => {
                let rejected = response
                    .into_inner()
                    .partial_success
                    .map_or(0, |p| u64::try_from(p.rejected_spans).unwrap_or(0))
                    .min(sent);
                counters.rejected.inc_by(rejected);
                counters.exported.inc_by(sent - rejected);
                backoff.reset();
                if failing {
                    tracing::info!(endpoint = %shown, "exporting spans to the OTLP collector again");
                    failing = false;
                }
            }
            Err(status) => {
                counters.export_failed.inc_by(sent);
                failing = true;
                if warned.is_none_or(|at| at.elapsed() >= WARN_EVERY) {
                    tracing::warn!(endpoint = %shown, error = %status, "cannot export spans to the OTLP collector; dropping them (keel_otlp_spans_dropped_total) until it answers");
                    warned = Some(Instant::now());
                }
                if stopping {
                    // No time to wait for it: what is left is counted as `shutdown`.
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = stop.wait_for(|s| *s) => {
                        waiting.rx.close();
                        stopping = true;
                    }
                }
            }
        }
    }
}

/// The next batch: waits for a first span, then up to [`FLUSH_EVERY`] for more, up to
/// [`BATCH_SPANS`]. Once stopping, only what is queued, without waiting; `None` when nothing is left.
async fn next_batch(
    rx: &mut mpsc::Receiver<Span>,
    stop: &mut watch::Receiver<bool>,
    stopping: &mut bool,
) -> Option<Vec<Span>> {
    let mut batch = Vec::new();
    let mut until: Option<Instant> = None;
    while batch.len() < BATCH_SPANS {
        if *stopping {
            match rx.try_recv() {
                Ok(span) => batch.push(span),
                Err(_) => break,
            }
            continue;
        }
        let flush = async move {
            match until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            span = rx.recv() => match span {
                Some(span) => {
                    batch.push(span);
                    until.get_or_insert_with(|| Instant::now() + FLUSH_EVERY);
                }
                None => break,
            },
            () = flush => break,
            // Stopped, or the server that owned the exporter is gone: send what is queued and end.
            _ = stop.wait_for(|s| *s) => {
                rx.close();
                *stopping = true;
            }
        }
    }
    (!batch.is_empty()).then_some(batch)
}

#[cfg(test)]
#[path = "exporter_tests.rs"]
mod tests;
