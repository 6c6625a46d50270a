//! `keel.monitor.v1.MonitorService`: applies each message of a server's stream to the monitor.
//! A message that cannot be applied is logged, counted and skipped; only transport errors (a
//! malformed frame, a message over the size limit), after which the stream cannot be read on,
//! end it.

use std::sync::Arc;

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::watch;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::BearerTokens;
use crate::monitor::Monitor;
use crate::record::{FeedbackRecord, PredictionRecord};
use crate::settings::ModelSpec;

use super::pb;
use super::pb::monitor_message::Kind;
use super::pb::monitor_service_server::{MonitorService, MonitorServiceServer};

/// Largest message accepted: a record batch of some thousands of wide rows, or a spec with a large
/// baseline, with room to spare; beyond it a client bug rather than a batch is likely.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The stream's own metrics, next to the monitor's in the same registry.
#[derive(Clone)]
struct StreamMetrics {
    messages: IntCounterVec,
    rejected: IntCounterVec,
    streams: IntGauge,
}

impl StreamMetrics {
    fn register(registry: &Registry) -> prometheus::Result<StreamMetrics> {
        let messages = IntCounterVec::new(
            Opts::new(
                "keel_sidecar_messages_total",
                "Messages received from servers, by kind (version, retire, records, feedback, empty)",
            ),
            &["kind"],
        )?;
        let rejected = IntCounterVec::new(
            Opts::new(
                "keel_sidecar_rejected_total",
                "Messages, records or feedback items the sidecar could not apply, by reason",
            ),
            &["reason"],
        )?;
        let streams = IntGauge::new("keel_sidecar_streams", "Server streams open")?;
        registry.register(Box::new(messages.clone()))?;
        registry.register(Box::new(rejected.clone()))?;
        registry.register(Box::new(streams.clone()))?;
        Ok(StreamMetrics {
            messages,
            rejected,
            streams,
        })
    }

    fn reject(&self, reason: &str, n: u64) {
        if n > 0 {
            self.rejected.with_label_values(&[reason]).inc_by(n);
        }
    }
}

/// The service state shared by all streams.
#[derive(Clone)]
pub(super) struct StreamService {
    monitor: Arc<Monitor>,
    metrics: StreamMetrics,
    /// Turns true at shutdown: open streams end, so the server's graceful shutdown need not wait
    /// for clients that never hang up.
    stopped: watch::Receiver<bool>,
}

/// What one message added to the stream's summary.
#[derive(Default)]
struct Applied {
    records: u64,
    feedback: u64,
}

impl StreamService {
    pub(super) fn new(
        monitor: Arc<Monitor>,
        registry: &Registry,
        stopped: watch::Receiver<bool>,
    ) -> prometheus::Result<StreamService> {
        Ok(StreamService {
            monitor,
            metrics: StreamMetrics::register(registry)?,
            stopped,
        })
    }

    /// The tonic service: gzip accepted, messages bounded by [`MAX_MESSAGE_BYTES`], and with
    /// `tokens` every call checked before its stream is read.
    pub(super) fn into_server(
        self,
        tokens: Option<BearerTokens>,
    ) -> InterceptedService<MonitorServiceServer<StreamService>, TokenCheck> {
        let refused = self
            .metrics
            .rejected
            .with_label_values(&["unauthenticated"]);
        let server = MonitorServiceServer::new(self)
            .accept_compressed(CompressionEncoding::Gzip)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        InterceptedService::new(server, TokenCheck { tokens, refused })
    }

    /// Applies one message. Runs on a blocking thread: the monitor's lock and a large batch can
    /// take milliseconds, which must not stall the runtime's workers.
    fn apply(&self, message: pb::MonitorMessage) -> Applied {
        let metrics = &self.metrics;
        let kind = match &message.kind {
            Some(Kind::Version(_)) => "version",
            Some(Kind::Retire(_)) => "retire",
            Some(Kind::Records(_)) => "records",
            Some(Kind::Feedback(_)) => "feedback",
            None => "empty",
        };
        metrics.messages.with_label_values(&[kind]).inc();
        let mut applied = Applied::default();
        match message.kind {
            Some(Kind::Version(v)) => self.set_version(&v.spec_json),
            Some(Kind::Retire(r)) => {
                tracing::info!(model = %r.model, version = r.version, "monitor: version retired");
                self.monitor.retire_version(&r.model, r.version);
            }
            Some(Kind::Records(batch)) => {
                let total = batch.records.len();
                let records = convert_all::<_, PredictionRecord>(batch.records, "record");
                metrics.reject("invalid_record", (total - records.len()) as u64);
                self.monitor.ingest(&records);
                applied.records = records.len() as u64;
            }
            Some(Kind::Feedback(batch)) => {
                let total = batch.items.len();
                let items = convert_all::<_, FeedbackRecord>(batch.items, "feedback item");
                metrics.reject("invalid_feedback", (total - items.len()) as u64);
                self.monitor.feedback(&items);
                applied.feedback = items.len() as u64;
            }
            // An unknown oneof member from a newer client decodes as none: skipping it keeps old
            // sidecars working with new servers.
            None => metrics.reject("empty_message", 1),
        }
        applied
    }

    fn set_version(&self, json: &str) {
        let spec = match serde_json::from_str::<ModelSpec>(json) {
            Ok(spec) => spec,
            Err(error) => {
                tracing::warn!(%error, "monitor: version spec is not a valid ModelSpec; skipped");
                self.metrics.reject("invalid_spec", 1);
                return;
            }
        };
        let (model, version) = (spec.model.clone(), spec.version);
        match self.monitor.set_version(spec) {
            Ok(()) => tracing::info!(%model, version, "monitor: version monitored"),
            Err(error) => {
                tracing::warn!(%model, version, %error, "monitor: version spec refused; skipped");
                self.metrics.reject("invalid_spec", 1);
            }
        }
    }
}

/// Converts what converts; logs the first failure of the batch only, so one broken client cannot
/// flood the log.
fn convert_all<W, R>(wire: Vec<W>, what: &str) -> Vec<R>
where
    R: TryFrom<W, Error = super::convert::ConvertError>,
{
    let mut first_error = None;
    let mut failed = 0usize;
    let out: Vec<R> = wire
        .into_iter()
        .filter_map(|w| match R::try_from(w) {
            Ok(r) => Some(r),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
                None
            }
        })
        .collect();
    if let Some(error) = first_error {
        tracing::warn!(%error, failed, "monitor: skipped invalid {what}s of a batch");
    }
    out
}

/// Answers UNAUTHENTICATED, before any message is read, to a call without one of the accepted
/// tokens in its `authorization` metadata (counted as `keel_sidecar_rejected_total{reason=
/// "unauthenticated"}`; logged at debug only, so refused clients cannot flood the log); lets every
/// call through without tokens.
#[derive(Clone)]
pub(super) struct TokenCheck {
    tokens: Option<BearerTokens>,
    refused: IntCounter,
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(tokens) = &self.tokens else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        match tokens.check(presented) {
            Ok(()) => Ok(request),
            Err(failure) => {
                self.refused.inc();
                tracing::debug!(peer = ?request.remote_addr(), ?failure, "monitor: stream refused without a valid token");
                Err(Status::unauthenticated(failure.message("monitor token")))
            }
        }
    }
}

/// Keeps `keel_sidecar_streams` right however the stream ends.
struct OpenStream(IntGauge);

impl OpenStream {
    fn new(gauge: &IntGauge) -> OpenStream {
        gauge.inc();
        OpenStream(gauge.clone())
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[tonic::async_trait]
impl MonitorService for StreamService {
    async fn stream(
        &self,
        request: Request<Streaming<pb::MonitorMessage>>,
    ) -> Result<Response<pb::StreamSummary>, Status> {
        let peer = request.remote_addr();
        let mut stream = request.into_inner();
        let _open = OpenStream::new(&self.metrics.streams);
        let mut stopped = self.stopped.clone();
        let mut summary = pb::StreamSummary::default();
        tracing::info!(?peer, "monitor: server stream opened");
        loop {
            let next = tokio::select! {
                biased;
                _ = stopped.wait_for(|s| *s) => break,
                next = stream.message() => next,
            };
            let message = match next {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(status) => {
                    tracing::warn!(?peer, %status, "monitor: server stream failed");
                    self.metrics.reject("transport", 1);
                    return Err(status);
                }
            };
            let service = self.clone();
            match tokio::task::spawn_blocking(move || service.apply(message)).await {
                Ok(applied) => {
                    summary.records += applied.records;
                    summary.feedback += applied.feedback;
                }
                Err(error) => {
                    // A panic in the monitor: the message is lost, the stream and monitor go on
                    // (its lock ignores poisoning).
                    tracing::error!(%error, "monitor: applying a message failed");
                    self.metrics.reject("internal", 1);
                }
            }
        }
        tracing::info!(
            ?peer,
            records = summary.records,
            feedback = summary.feedback,
            "monitor: server stream closed"
        );
        Ok(Response::new(summary))
    }
}
